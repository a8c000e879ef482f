"""The offline demo world: a tiny pretrained base model and the headline task, in `DATA_FOLDER`.

`load_model("ftlib-tiny")` loads the model from `tiny_model_path()`; `load_headlines("train")`
returns the task's rows. The scripts that made them live next to this file:
`python -m ftlib.demo.pretrain` (corpus, tokenizer, model) and `python -m ftlib.demo.headlines`.
"""

import json
from pathlib import Path

from ftlib.errors import FtlibError

DEMO_ALIAS = "ftlib-tiny"
# The data lives in data/ at the repository root; pyproject.toml ships it inside the package as
# ftlib/demo/data/. So an installed wheel finds it next to this file, and a source checkout (an editable
# install included) at the repository root.
INSTALLED_DATA = Path(__file__).resolve().parent / "data"
CHECKOUT_DATA = Path(__file__).resolve().parents[2] / "data"
DATA_FOLDER = INSTALLED_DATA if INSTALLED_DATA.is_dir() else CHECKOUT_DATA
HEADLINE_SPLITS = ("train", "test")


def use_one_cpu_thread():
    """On a CPU, run the tiny model on one thread: its matrices are too small to share among threads.

    Measured on a busy 2-core machine: 0.2 s a LoRA step with one thread, 2.3 s with two (the second
    thread mostly waits). On a GPU nothing changes.

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


def load_headlines(split="train"):
    """Rows of the headline task, {"question": ..., "answer": "positive" | "negative"}.

    Example:
        >>> load_headlines("test")[0]["answer"] in ("positive", "negative")
        True
    """
    if split not in HEADLINE_SPLITS:
        raise FtlibError(f'unknown headline split {split!r}: use "train" or "test"')
    path = DATA_FOLDER / "headlines" / f"{split}.jsonl"
    if not path.is_file():
        raise FtlibError(
            f"the headline data is missing: {path} does not exist. Rebuild it with "
            "`python -m ftlib.demo.headlines`"
        )
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
