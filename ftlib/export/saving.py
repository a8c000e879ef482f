"""Step 7 of the guide: keep the fine-tune and run it where you like.

    >>> save(model, tokenizer, "my-adapter")                           # LoRA adapter: small, needs the base
    >>> save(model, tokenizer, "my-model", method="merged_16bit")      # one standalone model (vLLM, transformers)
    >>> save(model, tokenizer, "my-ollama", method="ollama")           # merged + Modelfile for `ollama create`
    >>> save(model, tokenizer, "my-gguf", method="gguf")  # q8_0; the converter: `ftlib install-gguf-converter`
    >>> save(model, tokenizer, "my-adapter", repo_id="your-name/my-adapter")  # also uploads it to the Hub

Every save writes into a temporary folder beside the target and renames it into place at the end,
so a crash half-way leaves any earlier save untouched. `load_model(folder)` reads any of them back.
"""

import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ftlib.demo import DEMO_ALIAS, tiny_model_path
from ftlib.errors import FtlibError
from ftlib.export.gguf import gguf_plan
from ftlib.export import hub
from ftlib.export.merged import is_peft, write_merged
from ftlib.export.ollama import chat_template_parts, write_ollama_files

METHODS = ("lora", "merged_16bit", "ollama", "gguf")

# Files that show a folder holds an earlier save, so overwrite=True may replace it.
_SAVE_MARKERS = ("adapter_config.json", "config.json", "Modelfile", "model.safetensors")


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


def _check_target(path, overwrite):
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise FtlibError(f"path must be a folder name like 'my-adapter', got {path!r}")
    target = Path(path).expanduser().absolute()
    if target == Path(target.anchor) or target in (Path.cwd(), Path.home()) or Path.cwd().is_relative_to(target):
        raise FtlibError(f"refusing to save into {target} itself (it holds your other files): "
                         "pass a new sub-folder, e.g. 'outputs/my-adapter'")
    if target.exists() and not target.is_dir():
        raise FtlibError(f"{target} is a file, not a folder: choose another path for the save")
    if target.is_dir() and any(target.iterdir()):
        if not overwrite:
            raise FtlibError(
                f"{target} is not empty: pass overwrite=True to replace it, or choose a new folder"
            )
        if not any((target / marker).exists() for marker in _SAVE_MARKERS) and not list(target.glob("*.gguf")):
            raise FtlibError(
                f"{target} holds files that are not a saved model, so overwrite=True will not delete them: "
                "choose a new folder"
            )
    return target


def _swap_into_place(temporary, target):
    """Rename the finished temporary folder to the target; the old save goes only after that worked."""
    previous = None
    if target.exists():
        previous = target.with_name(f".{target.name}.previous-{uuid.uuid4().hex[:8]}")
        os.replace(target, previous)
    try:
        os.replace(temporary, target)
    except BaseException:
        if previous is not None:
            os.replace(previous, target)
        raise
    if previous is not None:
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
             f"# {kind} fine-tuned from {base}", "", "Made with ftlib.", ""]
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


def save(
    model,
    tokenizer,
    path,
    *,
    method="lora",  # lora: small adapter | merged_16bit: standalone model | ollama | gguf (llama.cpp's converter)
    overwrite=False,  # True replaces an earlier save in `path`; other files are never deleted
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

    Returns a SaveResult listing each file and its size. Writes to a temporary folder beside `path`
    and renames it into place at the end: a failure leaves any earlier save intact. With
    `repo_id`, the finished folder is then pushed to the Hub (see `push_to_hub`).

    Example:
        >>> save(model, tokenizer, "my-adapter")  # doctest: +SKIP
        >>> save(model, tokenizer, "my-adapter", repo_id="your-name/my-adapter")  # doctest: +SKIP
    """
    if method not in METHODS:
        raise FtlibError(f"unknown save method {method!r}: use one of {', '.join(METHODS)} "
                         "('lora' is smallest; 'merged_16bit' for vLLM; 'ollama' for Ollama)")
    _check_options_suit_method(method, dtype=dtype, max_shard_size=max_shard_size, quantization=quantization,
                               llama_cpp_dir=llama_cpp_dir, system_prompt=system_prompt)
    if repo_id is not None:
        hub.check_repo_id(repo_id)
    elif token is not None:
        raise FtlibError("token= is for uploading, but no repo_id was given: add repo_id='your-name/model-name' "
                         "to push the save to the Hub, or leave token out")
    target = _check_target(path, overwrite)
    if quantization is None:
        quantization = "q8_0"
    gguf = gguf_plan(quantization, llama_cpp_dir) if method == "gguf" else None  # tools first
    if method == "ollama":
        chat_template_parts(tokenizer)  # fail early when the template cannot be translated

    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.saving-{uuid.uuid4().hex[:8]}")
    temporary.mkdir()
    notes = []
    try:
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
        (temporary / "README.md").write_text(model_card(model, method, base, dtype_written))
        _swap_into_place(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    result = SaveResult(path=target, method=method, files=_listing(target), notes=notes)
    if verbose:
        print(result)
    if repo_id is not None:  # after the local save is complete, so a failed upload loses nothing
        result.repo_url = hub.push_to_hub(target, repo_id, token=token, private=private)
        if verbose:
            print(f"Pushed to {result.repo_url}")
    return result


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
