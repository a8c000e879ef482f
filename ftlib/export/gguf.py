"""GGUF: the file llama.cpp, Ollama and LM Studio run, written by llama.cpp's converter from a merged folder.

The converter is pure Python, and PyPI carries it: the source package of llama-cpp-python holds
llama.cpp's `convert_hf_to_gguf.py` with its `conversion` modules and `gguf-py`.

    install_converter()      # `ftlib install-gguf-converter`: once, about a minute; save() then finds it
    find_llama_cpp()         # (converter, llama-quantize or None)
"""

import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import uuid
from pathlib import Path

from ftlib.errors import FtlibError

GGUF_QUANTIZATIONS = {"q8_0": "Q8_0", "q4_k_m": "Q4_K_M", "f16": "F16"}

# The llama-cpp-python release whose source package carries the converter (its llama.cpp converts Llama,
# SmolLM2, Mistral, Qwen 2/3, Gemma 2/3 and Phi-3 checkpoints; tested here on SmolLM2).
CONVERTER_VERSION = "0.3.36"
INSTALL_COMMAND = "ftlib install-gguf-converter"
# What install_converter keeps from the package's vendor/llama.cpp/ folder.
_CONVERTER_FILES = ("convert_hf_to_gguf.py", "conversion", "gguf-py", "LICENSE")
# Python modules the converter imports beyond ftlib's own (torch, transformers, safetensors), with their
# pip names: sentencepiece (tried first for every Llama-style tokenizer), and what its gguf-py needs.
CONVERTER_NEEDS = {"sentencepiece": "sentencepiece", "numpy": "numpy", "yaml": "pyyaml", "tqdm": "tqdm",
                   "requests": "requests"}

GGUF_STEPS = (
    "GGUF export needs llama.cpp's converter, which was not found. Install it from PyPI (about a minute, "
    "nothing to compile):\n"
    f"  {INSTALL_COMMAND}        # or in Python: from ftlib.export.gguf import install_converter; install_converter()\n"
    "Or use a llama.cpp checkout:\n"
    "  git clone https://github.com/ggml-org/llama.cpp\n"
    "  pip install sentencepiece                                    # the converter's one extra Python package\n"
    "  cmake -S llama.cpp -B llama.cpp/build && cmake --build llama.cpp/build --target llama-quantize -j"
    "   # only for q4_k_m\n"
    "then pass llama_cpp_dir='llama.cpp' (or set LLAMA_CPP_DIR). Or convert by hand:\n"
    "  save(model, tokenizer, 'merged', method='merged_16bit')\n"
    "  python llama.cpp/convert_hf_to_gguf.py merged --outtype q8_0 --outfile model-q8_0.gguf"
)


def converter_folder(version=CONVERTER_VERSION):
    """Where install_converter puts the converter by default: a folder in ftlib's cache.

    Example:
        >>> converter_folder()  # doctest: +SKIP
        PosixPath('/root/.cache/ftlib/llama.cpp-converter-0.3.36')
    """
    from ftlib.gguf_cache import cache_root

    return cache_root() / f"llama.cpp-converter-{version}"


def install_converter(folder=None, version=CONVERTER_VERSION, verbose=True):
    """Install llama.cpp's GGUF converter from PyPI into `folder` (default: ftlib's cache); returns the folder.

    Downloads the source package of llama-cpp-python (about 77 MB; nothing is compiled), keeps its
    vendor/llama.cpp/ converter (convert_hf_to_gguf.py, conversion/, gguf-py/, LICENSE), and pip-installs
    the converter's Python packages that are missing (see CONVERTER_NEEDS). `save(..., method="gguf")`
    then finds it without llama_cpp_dir. The same as `ftlib install-gguf-converter`.

    Example:
        >>> install_converter()  # doctest: +SKIP
        PosixPath('/root/.cache/ftlib/llama.cpp-converter-0.3.36')
    """
    target = Path(folder).expanduser().absolute() if folder is not None else converter_folder(version)
    say = print if verbose else (lambda *args: None)
    if (target / "convert_hf_to_gguf.py").is_file():
        say(f"llama.cpp's converter is already in {target}")
    else:
        if target.exists() and any(target.iterdir()):
            raise FtlibError(f"{target} is not empty and holds no convert_hf_to_gguf.py: pass another folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        say(f"downloading llama-cpp-python=={version}'s source package (about 77 MB) for llama.cpp's converter")
        with tempfile.TemporaryDirectory(prefix="ftlib-llama-cpp-") as download:
            _pip("download", "--no-deps", "--no-binary", ":all:", f"llama-cpp-python=={version}", "-d", download)
            archives = sorted(Path(download).glob("llama_cpp_python-*.tar.gz"))
            if not archives:
                raise FtlibError(f"pip downloaded no source package of llama-cpp-python=={version}: "
                                 f"check the version, or see the steps: {GGUF_STEPS}")
            partial = target.with_name(f".{target.name}.partial-{uuid.uuid4().hex[:8]}")
            try:
                _unpack_converter(archives[0], partial)
                if target.exists():
                    target.rmdir()  # empty, checked above
                os.replace(partial, target)
            finally:
                shutil.rmtree(partial, ignore_errors=True)
    missing = sorted({name for module, name in CONVERTER_NEEDS.items() if importlib.util.find_spec(module) is None})
    if missing:
        say(f"installing the converter's Python packages: {' '.join(missing)}")
        _pip("install", *missing)
    say(f"llama.cpp's converter is ready in {target}; save(..., method='gguf') finds it there")
    return target


def _pip(*arguments):
    finished = subprocess.run([sys.executable, "-m", "pip", *arguments], capture_output=True, text=True)
    if finished.returncode != 0:
        tail = (finished.stderr or finished.stdout).strip()[-1500:]
        raise FtlibError(f"pip {arguments[0]} failed (exit {finished.returncode}):\n{tail}\n"
                         "Check the network connection to PyPI, or follow the steps with a llama.cpp checkout:\n"
                         + GGUF_STEPS.split("Or use a llama.cpp checkout:\n", 1)[1])


def _unpack_converter(archive, folder):
    """Extract vendor/llama.cpp/{converter files} from the source archive into `folder`, nothing else."""
    folder.mkdir(parents=True)
    with tarfile.open(archive) as source:
        for member in source.getmembers():
            parts = Path(member.name).parts
            if len(parts) < 4 or parts[1:3] != ("vendor", "llama.cpp") or parts[3] not in _CONVERTER_FILES:
                continue
            if ".." in parts or not (member.isfile() or member.isdir()):
                continue  # only plain files and folders inside the package
            destination = folder.joinpath(*parts[3:])
            if member.isdir():
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            with source.extractfile(member) as data, open(destination, "wb") as written:
                shutil.copyfileobj(data, written)
    if not (folder / "convert_hf_to_gguf.py").is_file():
        raise FtlibError(f"{archive.name} holds no vendor/llama.cpp/convert_hf_to_gguf.py: "
                         f"try another version, or follow the steps: {GGUF_STEPS}")


def find_llama_cpp(llama_cpp_dir=None):
    """(converter script, llama-quantize binary or None) from llama_cpp_dir, LLAMA_CPP_DIR, install_converter's
    folder, or PATH.

    Example:
        >>> find_llama_cpp("llama.cpp")  # doctest: +SKIP
    """
    folders = [Path(p).expanduser() for p in (llama_cpp_dir, os.environ.get("LLAMA_CPP_DIR")) if p]
    folders.append(converter_folder())
    converter = next((f / "convert_hf_to_gguf.py" for f in folders if (f / "convert_hf_to_gguf.py").is_file()), None)
    if converter is None:
        found = shutil.which("convert_hf_to_gguf.py") or shutil.which("convert-hf-to-gguf")
        converter = Path(found) if found else None
    candidates = [path for folder in folders for path in (folder / "build" / "bin" / "llama-quantize",
                                                          folder / "llama-quantize")]
    quantizer = next((path for path in candidates if path.is_file() and os.access(path, os.X_OK)), None)
    if quantizer is None and shutil.which("llama-quantize"):
        quantizer = Path(shutil.which("llama-quantize"))
    return converter, quantizer


def gguf_plan(quantization, llama_cpp_dir=None):
    """(quantizations, converter, quantizer), checked before any work so a missing tool fails at once.

    Example:
        >>> quantizations, converter, quantizer = gguf_plan("q8_0", "llama.cpp")  # doctest: +SKIP
    """
    quantizations = [quantization] if isinstance(quantization, str) else list(quantization)
    for name in quantizations:
        if name not in GGUF_QUANTIZATIONS:
            raise FtlibError(f"unknown GGUF quantization {name!r}: use one of {sorted(GGUF_QUANTIZATIONS)} "
                             "(q8_0: near-lossless, half of 16-bit; q4_k_m: a quarter, small quality loss)")
    converter, quantizer = find_llama_cpp(llama_cpp_dir)
    if converter is None:
        raise FtlibError(GGUF_STEPS)
    missing = sorted({name for module, name in CONVERTER_NEEDS.items() if importlib.util.find_spec(module) is None})
    if missing:
        raise FtlibError(f"llama.cpp's converter ({converter}) needs Python packages that are missing here: "
                         f"pip install {' '.join(missing)}   (or run {INSTALL_COMMAND}, which installs them)")
    if "q4_k_m" in quantizations and quantizer is None:
        raise FtlibError("q4_k_m needs llama.cpp's llama-quantize program, which was not found: "
                         "cmake -S llama.cpp -B llama.cpp/build && cmake --build llama.cpp/build "
                         "--target llama-quantize -j, then pass llama_cpp_dir='llama.cpp'; or use quantization='q8_0'")
    return quantizations, converter, quantizer


def _run(command):
    finished = subprocess.run([str(part) for part in command], capture_output=True, text=True)
    if finished.returncode != 0:
        tail = (finished.stderr or finished.stdout).strip()[-1500:]
        program = Path(str(command[1] if command[0] == sys.executable else command[0])).name
        advice = "Check that llama.cpp is up to date (git pull) and supports this architecture."
        if "pre-tokenizer was not recognized" in tail:
            # The converter names a BPE tokenizer by hashing how it splits a test text; unknown ones stop it.
            advice = ("llama.cpp's converter knows the tokenizers of published models only, and this one is not "
                      "among them: save with method='merged_16bit' and serve it with transformers or vLLM, or "
                      "fine-tune a published model (e.g. 'smollm2-135m-instruct') for GGUF.")
        raise FtlibError(f"{program} failed (exit {finished.returncode}):\n{tail}\n{advice}")


def write_gguf(folder, quantizations, converter, quantizer, model_name=None):
    """Run llama.cpp's converter on the merged model in `folder`, writing model-<quantization>.gguf files there.

    `model_name` becomes the GGUF's general.name (llama.cpp and Ollama show it). Returns the file names.
    """
    written = []
    name_option = ["--model-name", model_name] if model_name else []
    with _converter_input(folder) as source:
        for name in quantizations:
            output = folder / f"model-{name}.gguf"
            if name == "q4_k_m":
                # The converter writes 16-bit; llama-quantize then makes the k-quant from it.
                intermediate = folder / "model-f16.gguf.partial"
                _run([sys.executable, converter, source, "--outfile", intermediate, "--outtype", "f16", *name_option])
                _run([quantizer, intermediate, output, GGUF_QUANTIZATIONS[name]])
                intermediate.unlink(missing_ok=True)
            else:
                _run([sys.executable, converter, source, "--outfile", output, "--outtype", name, *name_option])
            written.append(output.name)
    return written


def byte_level_tokenizer_for_llama_cpp(tokenizer_json):
    """The tokenizer.json to give llama.cpp's converter, or None when the saved one serves as it is.

    A byte-level BPE tokenizer (GPT-2's kind: every byte has a token) that also says byte_fallback,
    with the decoder chain of SentencePiece-style models, is what transformers makes when it reads a
    GGUF file (SmolLM2's, for one). Its text splits the same either way, but llama.cpp's converter takes
    byte_fallback to mean a SentencePiece vocabulary, and llama.cpp then fails on the first text it
    tokenizes. Without byte_fallback and with the plain byte-level decoder it is written as what it is.

    Example:
        >>> byte_level_tokenizer_for_llama_cpp(json.loads(Path("tokenizer.json").read_text()))  # doctest: +SKIP
    """
    model = tokenizer_json.get("model") or {}
    pre = tokenizer_json.get("pre_tokenizer") or {}
    pre_types = [pre.get("type")] + [item.get("type") for item in pre.get("pretokenizers") or []]
    if model.get("type") != "BPE" or not model.get("byte_fallback") or "ByteLevel" not in pre_types:
        return None
    if any(token.startswith("<0x") and token.endswith(">") for token in model.get("vocab", {})):
        return None  # real byte-fallback tokens: a SentencePiece-style vocabulary, left as it is
    fixed = dict(tokenizer_json, model=dict(model, byte_fallback=False))
    fixed["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    return fixed


@contextlib.contextmanager
def _converter_input(folder):
    """`folder`, or a temporary view of it (links to its files) whose tokenizer.json llama.cpp reads correctly.

    The saved folder itself keeps the tokenizer exactly as transformers wrote it.
    """
    tokenizer_file = folder / "tokenizer.json"
    fixed = None
    if tokenizer_file.is_file():
        fixed = byte_level_tokenizer_for_llama_cpp(json.loads(tokenizer_file.read_text(encoding="utf-8")))
    if fixed is None:
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="ftlib-gguf-input-") as temporary:
        view = Path(temporary)
        for path in folder.iterdir():
            if path.is_file() and path.name != "tokenizer.json" and not path.name.endswith((".gguf", ".partial")):
                _link_or_copy(path.absolute(), view / path.name)
        (view / "tokenizer.json").write_text(json.dumps(fixed, ensure_ascii=False), encoding="utf-8")
        yield view


def _link_or_copy(source, destination):
    try:
        os.symlink(source, destination)
    except OSError:  # e.g. Windows without the symlink privilege
        try:
            os.link(source, destination)
        except OSError:
            shutil.copy2(source, destination)
