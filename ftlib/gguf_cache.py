"""GGUF files become a cached safetensors folder that `load_model` reads like any other.

A GGUF file (llama.cpp's format) holds a model's weights, usually quantised, with its tokenizer and
chat template. transformers reads it with `from_pretrained(folder, gguf_file=name)` and de-quantises
every weight: slow (tens of seconds for a 135M-parameter model on 2 CPU cores), and a model loaded
that way cannot also be loaded in 4-bit. So the first load converts the file once into an ordinary
folder (config, safetensors weights, tokenizer) in the cache, and every load, the first included,
reads that folder: 4-bit, 8-bit and 16-bit loading then work as for any other model. The copy holds
the de-quantised weights, so it is larger than the file (538 MB in float32 for a 135M-parameter model).

    cache_root()                       # $FTLIB_CACHE, else $XDG_CACHE_HOME/ftlib, else ~/.cache/ftlib
    cached_copy("model.Q4_1.gguf")     # the folder, converted on first use (about a minute), then reused
"""

import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from ftlib.errors import FtlibError

MANIFEST = "ftlib-cache.json"  # written last: a folder without it (or with a file of the wrong size) is not used
GGUF_INSTALL = "pip install gguf"
STALE_SECONDS = 3600  # a half-written copy this old belongs to a run that died; newer ones may still be writing


def cache_root():
    """Where converted models are kept: $FTLIB_CACHE, else $XDG_CACHE_HOME/ftlib, else ~/.cache/ftlib.

    Example:
        >>> cache_root()  # doctest: +SKIP
        PosixPath('/root/.cache/ftlib')
    """
    if os.environ.get("FTLIB_CACHE"):
        return Path(os.environ["FTLIB_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "ftlib"


def cache_folder(gguf_path):
    """The folder that holds (or will hold) the converted copy of `gguf_path`.

    Named after the file plus a fingerprint of its path, size and modification time, so a replaced
    file gets a fresh copy and a stale one is never read.

    Example:
        >>> cache_folder("SmolLM2-135M-Instruct.Q4_1.gguf").name  # doctest: +SKIP
        'SmolLM2-135M-Instruct.Q4_1-3f9a0c21b7'
    """
    path = Path(gguf_path).expanduser().resolve()
    status = path.stat()
    fingerprint = hashlib.sha256(f"{path}|{status.st_size}|{status.st_mtime_ns}".encode()).hexdigest()[:10]
    return cache_root() / f"{path.stem}-{fingerprint}"


def is_complete(folder):
    """True when `folder` is a finished copy: its manifest lists every file with the size it was written at.

    Example:
        >>> is_complete(cache_folder("model.gguf"))  # doctest: +SKIP
        True
    """
    try:
        files = json.loads((Path(folder) / MANIFEST).read_text())["files"]
        return bool(files) and "config.json" in files and all(
            (Path(folder) / name).stat().st_size == size for name, size in files.items()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def cached_copy(gguf_path):
    """The cached safetensors folder for a GGUF file, converting it the first time.

    The copy is written into a temporary folder and renamed into place only when complete, so a run
    stopped half-way leaves nothing that a later load would read; an incomplete folder is rebuilt.

    Example:
        >>> model, tokenizer = load_model(str(cached_copy("model.Q4_1.gguf")))  # doctest: +SKIP
    """
    gguf_path = Path(gguf_path).expanduser().resolve()
    if not gguf_path.is_file():
        raise FtlibError(f"no GGUF file at {gguf_path}: check the path")
    folder = cache_folder(gguf_path)
    if is_complete(folder):
        return folder
    require_gguf_package()
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(folder)
    print(f"converting {gguf_path.name} to safetensors in {folder} (once; later loads read this copy)")
    started = time.perf_counter()
    temporary = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
    try:
        temporary.chmod(0o755)  # mkdtemp makes it private; the copy is an ordinary folder
        convert(gguf_path, temporary)
        files = {str(path.relative_to(temporary)): path.stat().st_size
                 for path in sorted(temporary.rglob("*")) if path.is_file()}
        manifest = {"source": str(gguf_path), "source_bytes": gguf_path.stat().st_size, "files": files}
        (temporary / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _move_into_place(temporary, folder)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    print(f"converted in {time.perf_counter() - started:.0f} s")
    return folder


def require_gguf_package():
    """Raise an error naming the pip command when the `gguf` package (which reads GGUF files) is missing."""
    from transformers.utils import is_gguf_available

    if not is_gguf_available():
        raise FtlibError(
            f"reading a GGUF file needs the gguf package (0.10 or newer): {GGUF_INSTALL}, "
            "or pip install 'ftlib[gguf]'"
        )


def convert(gguf_path, folder):
    """Write a GGUF file's model (de-quantised) and tokenizer into `folder` with save_pretrained."""
    options = {}
    try:  # newer transformers may keep GGUF blocks packed on a GPU; a copy on disk needs plain weights
        from transformers import GgufConfig

        options["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # older versions always de-quantise
        pass
    with _quiet_progress_bars():  # one line before and after says what happens; bars per tensor would flood a notebook
        _write_copy(Path(gguf_path), folder, options)


def _write_copy(gguf_path, folder, options):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, name = str(gguf_path.parent), gguf_path.name
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=name, device_map=None, **options)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        # The weights are ordinary tensors now; only the GGUF marker (model.hf_quantizer,
        # config.quantization_config, model.is_quantized) stops save_pretrained.
        quantizer.remove_quantization_config(model)
    packed = sorted({str(parameter.dtype) for parameter in model.parameters() if not parameter.is_floating_point()})
    if packed:
        raise FtlibError(
            f"{gguf_path.name} loaded with weights still packed ({', '.join(packed)}), so it cannot be cached "
            "as safetensors: try a newer transformers (pip install -U transformers)"
        )
    model.save_pretrained(str(folder))
    with tempfile.TemporaryDirectory() as alone:
        # Read the tokenizer from the file alone: tokenizer files beside it (an exported folder has them)
        # make transformers mix the two and drop the special tokens and the chat template.
        (Path(alone) / name).symlink_to(gguf_path.resolve())
        tokenizer = AutoTokenizer.from_pretrained(alone, gguf_file=name)
    _use_the_headers_special_tokens(tokenizer, gguf_path)
    # The conversion switches on a decoding clean-up ("word ." -> "word.") that transformers then skips,
    # with a warning at every decode, for BPE tokenizers; the models' own tokenizer files switch it off.
    tokenizer.clean_up_tokenization_spaces = False
    tokenizer.save_pretrained(str(folder))


HEADER_TOKENS = {"bos_token": "tokenizer.ggml.bos_token_id", "eos_token": "tokenizer.ggml.eos_token_id",
                 "unk_token": "tokenizer.ggml.unknown_token_id", "pad_token": "tokenizer.ggml.padding_token_id"}


def _use_the_headers_special_tokens(tokenizer, gguf_path):
    """Name the special tokens and chat template the GGUF header declares (transformers may mislabel EOS)."""
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf_path)).fields
    for attribute, key in HEADER_TOKENS.items():
        if key in fields:
            token_id = int(fields[key].contents())
            if 0 <= token_id < len(tokenizer):
                setattr(tokenizer, attribute, tokenizer.convert_ids_to_tokens(token_id))
    if "tokenizer.chat_template" in fields and not tokenizer.chat_template:
        tokenizer.chat_template = fields["tokenizer.chat_template"].contents()


@contextmanager
def _quiet_progress_bars():
    """No progress bars from transformers while converting: its own switch, and the GGUF reader's plain tqdm."""
    import functools

    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging

    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar
        if shown:
            logging.enable_progress_bar()


def _move_into_place(temporary, folder):
    if folder.exists():
        if is_complete(folder):  # another process finished the same copy first
            return
        shutil.rmtree(folder)  # a partial or damaged copy
    try:
        os.rename(temporary, folder)
    except OSError:
        if not is_complete(folder):  # lost a race to a copy that is itself broken: say so
            raise


def _remove_stale_partials(folder):
    for partial in folder.parent.glob(f".{folder.name}.*.partial"):
        try:
            if time.time() - partial.stat().st_mtime > STALE_SECONDS:
                shutil.rmtree(partial, ignore_errors=True)
        except OSError:
            pass
