"""Step 7 of the guide: keep the fine-tune and run it where you like.

    >>> save(model, tokenizer, "my-adapter")                           # LoRA adapter: small, needs the base
    >>> save(model, tokenizer, "my-model", method="merged_16bit")      # one standalone model (vLLM, transformers)
    >>> save(model, tokenizer, "my-ollama", method="ollama")           # merged + Modelfile for `ollama create`
    >>> save(model, tokenizer, "my-gguf", method="gguf")  # q8_0; the converter: `ftlib install-gguf-converter`
    >>> save(model, tokenizer, "my-adapter", repo_id="your-name/my-adapter")  # also uploads it to the Hub

Every save writes into a hidden folder beside the target (.name.saving-...) and swaps it into place in
one step at the end, so the folder holds the earlier save or the new one at every moment, even when the
process is killed half-way; what an interrupted save left behind is removed by the next save. ftlib
lists the files it wrote in ftlib_files.json, and `overwrite=True` replaces only those: any other file
in the folder is yours and is kept. `load_model(folder)` reads any save back.
"""

import ctypes
import errno
import fnmatch
import glob
import hashlib
import json
import os
import re
import shutil
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ftlib.checks import check_flag, describe_weights, non_finite_weights
from ftlib.demo import DEMO_ALIAS, tiny_model_path
from ftlib.errors import FtlibError, FtlibOSError, FtlibPermissionError
from ftlib.export.gguf import gguf_plan
from ftlib.export import hub
from ftlib.export.merged import is_peft, write_merged
from ftlib.export.ollama import chat_template_parts, write_ollama_files
from ftlib.training.distributed import written_by_main_process

METHODS = ("lora", "merged_16bit", "ollama", "gguf")

# The files a save wrote, by name: overwrite=True replaces these and keeps every other file in the folder.
MANIFEST = "ftlib_files.json"
# Files that show a folder holds a model, so a folder without a manifest is not taken for the user's notes.
_SAVE_MARKERS = ("adapter_config.json", "config.json", "Modelfile", "model.safetensors")
# What each method may write (before it has): a user's file by one of these names stops the save early.
_COMMON_NAMES = ("README.md", MANIFEST, "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "chat_template.jinja", "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model")
_METHOD_NAMES = {
    "lora": ("adapter_config.json", "adapter_model.safetensors"),
    "merged_16bit": ("config.json", "generation_config.json", "model.safetensors", "model-*.safetensors",
                     "model.safetensors.index.json", "ftlib_save.json"),
}
_METHOD_NAMES["ollama"] = _METHOD_NAMES["merged_16bit"] + ("Modelfile",)
_METHOD_NAMES["gguf"] = _METHOD_NAMES["ollama"] + ("*.gguf",)
_CARD_LINE = "Made with ftlib."  # in every model card save writes: marks a folder ftlib saved
_HASHED_BYTES = 64 * 1024**2  # files up to this size are recorded with their SHA-256; larger ones by size


# ----------------------------------------------------------------------------- report


@dataclass
class SaveResult:
    """What `save` wrote: the folder, each file with its size in bytes, and where it was pushed."""

    path: Path
    method: str
    files: list = field(default_factory=list)  # (relative name, bytes)
    repo_url: str | None = None
    notes: list = field(default_factory=list)

    @property
    def total_bytes(self):
        return sum(size for _, size in self.files)

    def __str__(self):
        labels = {
            "lora": "LoRA adapter", "merged_16bit": "merged model", "ollama": "merged model + Modelfile",
            "gguf": "merged model + GGUF",
        }
        lines = [f"Saved the {labels[self.method]} to {self.path} "
                 f"({len(self.files)} files, {human_size(self.total_bytes)}):"]
        lines += [f"  {name:<40} {human_size(size):>10}" for name, size in self.files]
        lines += self.notes
        if self.repo_url:
            lines.append(f"Pushed to {self.repo_url}")
        return "\n".join(lines)


def human_size(size):
    """Bytes as a short, readable size.

    Example:
        >>> human_size(1_500_000)
        '1.5 MB'
    """
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000


def _listing(folder):
    return sorted(
        (str(path.relative_to(folder)), path.stat().st_size) for path in folder.rglob("*") if path.is_file()
    )


# ----------------------------------------------------------------------------- atomic folders


@dataclass
class _Target:
    """Where a save goes, and what is in that folder now: the files ftlib's earlier save wrote, and the user's."""

    path: Path
    ours: list = field(default_factory=list)  # relative names of files the earlier save wrote, unchanged since
    theirs: list = field(default_factory=list)  # every other file (relative names): kept through the save


def check_target(path, overwrite=False):
    """Raise FtlibError when `save(..., path, overwrite=overwrite)` would refuse the folder: checked before training.

    Example:
        >>> check_target("my-adapter")  # doctest: +SKIP
    """
    _check_target(path, overwrite)


def _check_target(path, overwrite):
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise FtlibError(f"path must be a folder name like 'my-adapter', got {path!r}")
    target = Path(path).expanduser().absolute()
    if target == Path(target.anchor) or target in (Path.cwd(), Path.home()) or Path.cwd().is_relative_to(target):
        raise FtlibError(f"refusing to save into {target} itself (it holds your other files): "
                         "pass a new sub-folder, e.g. 'outputs/my-adapter'")
    _recover(target)
    if target.exists() and not target.is_dir():
        raise FtlibError(f"{target} is a file, not a folder: choose another path for the save")
    if not target.is_dir() or not any(target.iterdir()):
        return _Target(target)
    if not overwrite:
        raise FtlibError(
            f"{target} is not empty: pass overwrite=True to replace the earlier save (files ftlib did not write "
            "there are kept), or choose a new folder"
        )
    manifest = _read_manifest(target)
    files = sorted(str(item.relative_to(target)) for item in target.rglob("*") if item.is_file() or item.is_symlink())
    if manifest is None and _card_says_ftlib(target):  # a save that predates the manifest: its files go by name
        known = _COMMON_NAMES + tuple(name for names in _METHOD_NAMES.values() for name in names)
        ours = [name for name in files if any(fnmatch.fnmatch(name, pattern) for pattern in known)]
        return _Target(target, ours, [name for name in files if name not in ours])
    if manifest is None:
        if any((target / marker).exists() for marker in _SAVE_MARKERS) or list(target.glob("*.gguf")):
            raise FtlibError(
                f"{target} holds a model that ftlib has no record of writing (no {MANIFEST}), so overwrite=True will "
                f"not replace its files: delete or move the folder yourself, or choose a new folder"
            )
        raise FtlibError(
            f"{target} holds files that are not a saved model, so overwrite=True will not delete them: "
            "choose a new folder"
        )
    ours = [name for name in files if name in manifest and _unchanged(target / name, manifest[name])]
    edited = [name for name in files if name in manifest and name not in ours]
    if edited:
        shown = ", ".join(edited[:5]) + (", ..." if len(edited) > 5 else "")
        raise FtlibError(
            f"{target} holds {shown}, written by ftlib's earlier save and changed since, so overwrite=True will "
            "neither replace nor keep it: move your version elsewhere (or delete it), then save again; or save "
            "into a new folder"
        )
    theirs = [name for name in files if name not in ours and name != MANIFEST]
    return _Target(target, ours, theirs)


def _card_says_ftlib(folder):
    """Whether the folder's README.md is the model card `save` writes (a save from before the manifest)."""
    try:
        return _CARD_LINE in (folder / "README.md").read_text(errors="replace")
    except OSError:
        return False


def _read_manifest(folder):
    """{relative name: {"bytes": n, "sha256": hex or absent}} from the folder's manifest, or None without one."""
    try:
        record = json.loads((folder / MANIFEST).read_text())
        files = record["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return files if isinstance(files, dict) else None


def _fingerprint(path):
    size = path.stat().st_size
    entry = {"bytes": size}
    if size <= _HASHED_BYTES:
        entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return entry


def _unchanged(path, recorded):
    """Whether `path` still holds what the save wrote (so it is ftlib's to replace, not an edit of the user's)."""
    if path.is_symlink() or not path.is_file() or not isinstance(recorded, dict):
        return False
    if path.stat().st_size != recorded.get("bytes"):
        return False
    return "sha256" not in recorded or _fingerprint(path).get("sha256") == recorded["sha256"]


def _write_manifest(folder, method):
    files = {str(path.relative_to(folder)): _fingerprint(path)
             for path in sorted(folder.rglob("*")) if path.is_file() and path.name != MANIFEST}
    record = {"written_by": "ftlib.save", "method": method, "files": files,
              "note": "the files ftlib wrote here; save(..., overwrite=True) replaces these and keeps any other file"}
    (folder / MANIFEST).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def _refuse_clashes(target, names, exact):
    """FtlibError when a file of the user's has a name the save writes (or, before writing, may write)."""
    clashes = [name for name in target.theirs
               if (name in names if exact else any(fnmatch.fnmatch(name, pattern) for pattern in names))]
    if clashes:
        shown = ", ".join(clashes[:5]) + (", ..." if len(clashes) > 5 else "")
        raise FtlibError(
            f"{target.path} holds {shown}, which ftlib did not write, and this save would write a file of that "
            "name: move or rename yours, then save again; or save into a new folder"
        )


def _temporary_name(target, kind):
    return target.with_name(f".{target.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _stale_temporaries(target):
    """Hidden folders an interrupted save left beside `target` (whose process is gone)."""
    found = []
    for kind in ("saving", "previous"):
        for path in target.parent.glob(f".{glob.escape(target.name)}.{kind}-*"):
            parts = path.name.rsplit("-", 2)
            pid = int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None
            if pid is None or not _process_alive(pid):
                found.append(path)
    return sorted(found)


def _process_alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # another user's process, or a system that cannot tell: leave it
        return True
    return True


def _recover(target):
    """Undo what an interrupted save left: restore the earlier save where only it survives, drop the rest."""
    stale = _stale_temporaries(target)
    previous = [path for path in stale if ".previous-" in path.name]
    if previous and not target.exists():  # stopped between moving the old save aside and moving the new one in
        os.replace(previous[-1], target)
        print(f"note: restored {target} from {previous[-1].name}, left by a save that was interrupted")
    for path in stale:
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
            print(f"note: removed {path}, an unfinished copy left by a save that was interrupted")


def _carry_user_files(target, temporary):
    """Hard-link (or copy) the user's files from the old folder into the new one, so the swap keeps them."""
    for name in target.theirs:
        source, destination = target.path / name, temporary / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            os.symlink(os.readlink(source), destination)
            continue
        try:
            os.link(source, destination)  # the same file, not a copy: nothing of the user's is rewritten
        except OSError:  # a file system without hard links
            shutil.copy2(source, destination)
    for folder in sorted(path for path in target.path.rglob("*") if path.is_dir() and not any(path.iterdir())):
        (temporary / folder.relative_to(target.path)).mkdir(parents=True, exist_ok=True)


def _exchange(first, second):
    """Swap two paths in one step (Linux renameat2, macOS renamex_np); False where the system cannot."""
    libc = _libc()
    if libc is None:
        return False
    first, second = os.fsencode(str(first)), os.fsencode(str(second))
    if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
        at_working_directory, exchange = -100, 2  # AT_FDCWD, RENAME_EXCHANGE
        result = libc.renameat2(at_working_directory, first, at_working_directory, second, exchange)
    elif sys.platform == "darwin" and hasattr(libc, "renamex_np"):
        result = libc.renamex_np(first, second, 2)  # RENAME_SWAP
    else:
        return False
    if result == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):  # this file system cannot swap
        return False
    raise OSError(error, os.strerror(error), str(second, "utf-8", "replace"))


def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _swap_into_place(temporary, target):
    """Put the finished folder at `target` in one step; the old save (now at `temporary`) is removed after.

    Where the system cannot swap two folders in one step, the old save is moved aside first; a save
    interrupted between the two moves is restored by the next one (see _recover).
    """
    if not target.exists():
        os.replace(temporary, target)
        return
    if _exchange(temporary, target):
        shutil.rmtree(temporary, ignore_errors=True)  # it holds the old save now
        return
    previous = _temporary_name(target, "previous")
    os.replace(target, previous)
    try:
        os.replace(temporary, target)
    except BaseException:
        os.replace(previous, target)
        raise
    shutil.rmtree(previous, ignore_errors=True)


# ----------------------------------------------------------------------------- adapters


def _tiny_model_folder():
    try:
        return tiny_model_path().resolve()
    except FtlibError:  # an install without the demo data: real models need none
        return None


def base_model_name(model):
    """The base model id, folder or demo alias that `load_model` should load under this adapter.

    Example:
        >>> base_model_name(model)  # doctest: +SKIP
        'ftlib-tiny'
    """
    settings = getattr(model, "ftlib_settings", None) or {}
    candidates = [settings.get("model_name")]
    if is_peft(model):
        config = model.peft_config.get(_active_adapter(model))
        candidates.append(getattr(config, "base_model_name_or_path", None))
    candidates.append(getattr(getattr(model, "config", None), "_name_or_path", None))
    tiny = _tiny_model_folder()
    for name in candidates:
        if not name:
            continue
        name = str(name)
        path = Path(name).expanduser()
        if name == DEMO_ALIAS:
            return name
        if path.is_dir():
            if (path / "adapter_config.json").is_file():
                continue  # an adapter folder is not a base; the next candidate names the real base
            if tiny is not None and path.resolve() == tiny:
                return DEMO_ALIAS
            return str(path.resolve())  # absolute, so loading works from any working directory
        return name  # a Hub id
    raise FtlibError(
        "cannot tell which base model this adapter belongs to: load the model with ftlib.load_model, "
        "or set model.peft_config['default'].base_model_name_or_path before saving"
    )


def _active_adapter(model):
    active = getattr(model, "active_adapter", "default")
    return active[0] if isinstance(active, (list, tuple)) else active


def _write_lora(model, tokenizer, folder):
    if not is_peft(model):
        raise FtlibError(
            "method='lora' saves LoRA adapters, but this model has none (a full fine-tune or a base model): "
            "use method='merged_16bit' to save all its weights, or add_lora(model) before training"
        )
    model.save_pretrained(str(folder), safe_serialization=True)
    base = base_model_name(model)
    for config_path in folder.rglob("adapter_config.json"):
        values = json.loads(config_path.read_text())
        values["base_model_name_or_path"] = base
        config_path.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(str(folder))
    return base


def _projection_shapes(shape):
    """(input size, output size) of the seven projections of a Llama-style layer, from a model shape."""
    hidden, intermediate, heads = shape["hidden_size"], shape["intermediate_size"], shape["num_attention_heads"]
    head_dim = shape.get("head_dim") or hidden // heads
    query, key_value = heads * head_dim, (shape.get("num_key_value_heads") or heads) * head_dim
    return {"q_proj": (hidden, query), "k_proj": (hidden, key_value), "v_proj": (hidden, key_value),
            "o_proj": (query, hidden), "gate_proj": (hidden, intermediate), "up_proj": (hidden, intermediate),
            "down_proj": (intermediate, hidden)}


def adapter_size_note(model, folder):
    """One line: the adapter's size, and what the same adapter (rank, projections) weighs on Llama-3.1-8B.

    Each adapted projection of shape (input, output) adds r x (input + output) weights, so the size grows
    with the model's width and depth; the guide's "about 100 MB" is an 8B model's.

    Example:
        >>> adapter_size_note(model, "my-adapter")  # doctest: +SKIP
        "Adapter: 4.9 MB (1,228,800 LoRA weights, r=16 on 7 projections); on Llama-3.1-8B ... about 168 MB ..."
    """
    from ftlib.speed.memory import model_shape

    size = sum(path.stat().st_size for path in Path(folder).rglob("adapter_model.*"))
    lora = [parameter for name, parameter in model.named_parameters() if ".lora_" in name]
    config = model.peft_config.get(_active_adapter(model))
    modules = getattr(config, "target_modules", None)
    modules = sorted(modules) if isinstance(modules, (set, list, tuple)) else []
    count = sum(parameter.numel() for parameter in lora)
    line = f"Adapter: {human_size(size)} ({count:,} LoRA weights, r={config.r} on {len(modules)} projections)"
    eight_b = model_shape("llama-3.1-8b")
    shapes = _projection_shapes(eight_b)
    comparable = (lora and modules and set(modules) <= set(shapes) and not getattr(config, "rank_pattern", None)
                  and not getattr(config, "modules_to_save", None)
                  and getattr(config, "layers_to_transform", None) is None)
    if comparable:
        weights = eight_b["num_hidden_layers"] * sum(config.r * sum(shapes[name]) for name in modules)
        element = lora[0].element_size()
        stored = f"{human_size(weights * element)} as stored here ({str(lora[0].dtype).replace('torch.', '')})"
        if element != 2:
            stored += f", {human_size(weights * 2)} in 16-bit"
        line += f"; the same adapter on Llama-3.1-8B: {stored} (the guide: about 100 MB for an 8B model)"
    return line


# ----------------------------------------------------------------------------- model card


_SECRET_KEYS = re.compile(r"token|secret|password|key", re.IGNORECASE)
_RESULT_KEYS = ("final_loss", "final_eval_loss", "best_step", "steps", "steps_done", "seconds", "stopped_reason")
_DATA_KEYS = ("data_shape", "train_examples", "eval_examples", "test_examples", "max_seq_length")


def _table(values):
    rows = [f"| {name} | {value} |" for name, value in values.items()
            if not _SECRET_KEYS.search(str(name)) and value not in (None, "")]
    return ["| setting | value |", "| --- | --- |", *rows] if rows else []


def model_card(model, method, base, dtype=None):
    """A short README.md: base model, adapter settings, data shape, hyperparameters, final losses.

    Reads `model.ftlib_training`, the dict `train` leaves on the model: losses and step counts go under
    Results, data size and shape under Data, every other setting under Hyperparameters.

    Example:
        >>> print(model_card(model, "lora", "ftlib-tiny"))  # doctest: +SKIP
    """
    training = getattr(model, "ftlib_training", None) or {}
    kind = {"lora": "LoRA adapter", "merged_16bit": "merged model", "ollama": "merged model for Ollama",
            "gguf": "merged model with GGUF files"}[method]
    library = "peft" if method == "lora" else "transformers"
    lines = ["---", f"base_model: {base}", f"library_name: {library}", "tags:", "- ftlib",
             f"- {'lora' if method == 'lora' else 'merged'}", "---", "",
             f"# {kind} fine-tuned from {base}", "", _CARD_LINE, ""]
    if method == "lora":
        lines += ["Load it (the base model loads first, then this adapter):", "", "```python",
                  "from ftlib import load_model, generate", "model, tokenizer = load_model('path/to/this/folder')",
                  "```", ""]
    else:
        precision = str(dtype).replace("torch.", "") if dtype is not None else "the base's"
        lines += [f"Adapters merged into the (de-quantised) base weights in float32, stored as {precision}; "
                  "loads without peft:", "",
                  "```python", "from ftlib import load_model", "model, tokenizer = load_model('path/to/this/folder')",
                  "```", ""]
    if is_peft(model):
        config = model.peft_config.get(_active_adapter(model))
        adapter = {name: getattr(config, name, None) for name in
                   ("r", "lora_alpha", "lora_dropout", "use_rslora")}
        modules = getattr(config, "target_modules", None)
        adapter["target_modules"] = ", ".join(sorted(modules)) if isinstance(modules, (set, list)) else modules
        lines += ["## Adapter", "", *_table(adapter), ""]
    results, data, hyperparameters = {}, {}, {}
    for name, value in training.items():
        if isinstance(value, dict):  # nested groups, e.g. {"data": {...}} or {"hyperparameters": {...}}
            (data if name == "data" else hyperparameters).update(value)
        elif name in _RESULT_KEYS:
            results[name] = f"{value:.4f}" if isinstance(value, float) and "loss" in name else value
        elif name in _DATA_KEYS:
            data[name] = value
        elif value is not None and value != "":
            hyperparameters[name] = value
    for title, values in (("Data", data), ("Hyperparameters", hyperparameters), ("Results", results)):
        rows = _table(values)
        if rows:
            lines += [f"## {title}", "", *rows, ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- save


@written_by_main_process  # under torchrun or ftlib.launch, rank 0 writes the one copy and the others wait for it
def save(
    model,
    tokenizer,
    path,
    *,
    method="lora",  # lora: small adapter | merged_16bit: standalone model | ollama | gguf (llama.cpp's converter)
    overwrite=False,  # True replaces the files an earlier save wrote in `path`; your other files there are kept
    dtype=None,  # merged methods: None = the precision the model computes in; 'float16' halves float32
    max_shard_size=None,  # merged methods: largest safetensors file; None = "5GB", which suits the Hub and vLLM
    quantization=None,  # gguf: None = 'q8_0' (near-lossless); 'f16'; 'q4_k_m' (smaller, needs llama-quantize); a list
    llama_cpp_dir=None,  # gguf: your llama.cpp checkout; None looks at LLAMA_CPP_DIR, install_converter's folder, PATH
    system_prompt=None,  # ollama / gguf: an optional SYSTEM line for the Modelfile
    repo_id=None,  # 'your-name/model-name' also uploads the saved folder to the Hugging Face Hub
    token=None,  # with repo_id: None uses HF_TOKEN, a saved login, or asks (hidden)
    private=True,  # with repo_id: a new repository starts private
    verbose=True,  # print what was written and its size
):
    """Save a fine-tuned model so `load_model(path)` (or vLLM, Ollama, llama.cpp) can run it.

    Returns a SaveResult listing each file it wrote and its size (also recorded in ftlib_files.json).
    Writes to a hidden folder beside `path` and swaps it into place in one step at the end: a failure, or
    the process killed at any moment, leaves the earlier save intact. Files in `path` that ftlib did not
    write are kept. Refuses a model with NaN or infinite weights. With `repo_id`, the files of the save
    are then pushed to the Hub (see `push_to_hub`).

    Example:
        >>> save(model, tokenizer, "my-adapter")  # doctest: +SKIP
        >>> save(model, tokenizer, "my-adapter", repo_id="your-name/my-adapter")  # doctest: +SKIP
    """
    if method not in METHODS:
        raise FtlibError(f"unknown save method {method!r}: use one of {', '.join(METHODS)} "
                         "('lora' is smallest; 'merged_16bit' for vLLM; 'ollama' for Ollama)")
    _check_options_suit_method(method, dtype=dtype, max_shard_size=max_shard_size, quantization=quantization,
                               llama_cpp_dir=llama_cpp_dir, system_prompt=system_prompt)
    for name, value in (("overwrite", overwrite), ("private", private), ("verbose", verbose)):
        check_flag(name, value)
    if repo_id is not None:
        hub.check_repo_id(repo_id)
    elif token is not None:
        raise FtlibError("token= is for uploading, but no repo_id was given: add repo_id='your-name/model-name' "
                         "to push the save to the Hub, or leave token out")
    _check_model_to_save(model, tokenizer, method)
    target = _check_target(path, overwrite)
    _refuse_clashes(target, _COMMON_NAMES + _METHOD_NAMES[method], exact=False)
    if quantization is None:
        quantization = "q8_0"
    gguf = gguf_plan(quantization, llama_cpp_dir) if method == "gguf" else None  # tools first
    if method == "ollama":
        chat_template_parts(tokenizer)  # fail early when the template cannot be translated

    temporary = _temporary_name(target.path, "saving")
    try:
        target.path.parent.mkdir(parents=True, exist_ok=True)
        temporary.mkdir()
    except PermissionError as error:
        raise FtlibPermissionError(
            f"cannot write in {target.path.parent} ({error.strerror}): pass a path in a folder you may write to, "
            "e.g. one under your home folder"
        ) from error
    notes = []
    try:
        base, dtype_written = _write(model, tokenizer, method, temporary, target.path, dtype, max_shard_size,
                                     system_prompt, gguf, notes)
        (temporary / "README.md").write_text(model_card(model, method, base, dtype_written))
        _write_manifest(temporary, method)
        written = _listing(temporary)
        _refuse_clashes(target, {name for name, _ in written}, exact=True)
        _carry_user_files(target, temporary)
        _swap_into_place(temporary, target.path)
    except BaseException as error:
        shutil.rmtree(temporary, ignore_errors=True)
        if isinstance(error, PermissionError):
            raise FtlibPermissionError(
                f"saving to {target.path} was refused ({error.strerror}: {error.filename}); the earlier save there is "
                "untouched: pass a path in a folder you may write to"
            ) from error
        if isinstance(error, OSError) and not isinstance(error, FtlibError):
            raise FtlibOSError(
                f"saving to {target.path} failed ({type(error).__name__}: {error}); the earlier save there is "
                "untouched: free disk space (a merged model needs about 2 bytes a weight in 16-bit) or pick another "
                "folder, then save again"
            ) from error
        raise
    if target.theirs:
        shown = ", ".join(target.theirs[:5]) + (", ..." if len(target.theirs) > 5 else "")
        notes.append(f"Kept {len(target.theirs)} file(s) of yours in the folder: {shown} (ftlib replaced only the "
                     f"files its earlier save there wrote, listed in {MANIFEST}).")
    result = SaveResult(path=target.path, method=method, files=written, notes=notes)
    if verbose:
        print(result)
    if repo_id is not None:  # after the local save is complete, so a failed upload loses nothing
        result.repo_url = hub.push_to_hub(target.path, repo_id, token=token, private=private,
                                          files=[name for name, _ in written])
        if verbose:
            print(f"Pushed to {result.repo_url}")
    return result


def _write(model, tokenizer, method, temporary, target, dtype, max_shard_size, system_prompt, gguf, notes):
    """Write the save's files into `temporary`; returns (base model name, dtype of merged weights or None)."""
    if method == "lora":
        base = _write_lora(model, tokenizer, temporary)
        dtype_written = None
        notes.append(adapter_size_note(model, temporary))
        notes.append(f"Load it with: load_model({str(target)!r})  (base: {base})")
    else:
        dtype_written = write_merged(model, tokenizer, temporary, dtype, max_shard_size or "5GB")
        try:
            base = base_model_name(model)
        except FtlibError:  # a model built in memory has no name to record
            base = "unknown"
        if dtype_written == torch.float32:
            notes.append("Weights are float32, the precision the model was loaded in; dtype='float16' "
                         "halves the size.")
        notes.append(f"Load it with: load_model({str(target)!r}); serve with: vllm serve {target}")
    if method in ("ollama", "gguf"):
        notes += write_ollama_files(temporary, tokenizer, target, system_prompt, gguf)
    return base, dtype_written


def _check_model_to_save(model, tokenizer, method):
    """Refuse what cannot make a working save, before anything is written: no model, no tokenizer, NaN weights."""
    if not isinstance(model, torch.nn.Module):
        raise FtlibError(f"save needs the model that load_model (and add_lora, train) returned, got "
                         f"{type(model).__name__}: save(model, tokenizer, 'my-adapter')")
    if tokenizer is None or not callable(getattr(tokenizer, "save_pretrained", None)):
        raise FtlibError(f"save needs the model's tokenizer as its second argument, got {type(tokenizer).__name__}: "
                         "save(model, tokenizer, 'my-adapter'), with the tokenizer load_model returned")
    broken = non_finite_weights(model)
    if method == "lora":  # an adapter holds only the adapter's weights: a problem elsewhere is not saved
        broken = [name for name in broken if ".lora_" in name or "modules_to_save" in name]
    if broken:
        raise FtlibError(
            f"the model holds NaN or infinite values, in {describe_weights(broken)}, so the save would not work: "
            "nothing was written. Load the model again (or its last good save), and if training made them, train "
            "again with a lower learning_rate"
        )


# Which save methods use each method-specific option; any other method would ignore it.
_OPTION_METHODS = {
    "dtype": ("merged_16bit", "ollama", "gguf"),
    "max_shard_size": ("merged_16bit", "ollama", "gguf"),
    "quantization": ("gguf",),
    "llama_cpp_dir": ("gguf",),
    "system_prompt": ("ollama", "gguf"),
}


def _check_options_suit_method(method, **options):
    for name, value in options.items():
        if value is not None and method not in _OPTION_METHODS[name]:
            suited = " or ".join(f"method={choice!r}" for choice in _OPTION_METHODS[name])
            raise FtlibError(
                f"{name}={value!r} has no effect on method={method!r}: it applies to {suited}; "
                f"leave {name} out, or choose one of those methods"
            )
