"""Step 7 of the guide: keep the fine-tune and run it where you like.

    >>> save(model, tokenizer, "my-adapter")                           # LoRA adapter: small, needs the base
    >>> save(model, tokenizer, "my-model", method="merged_16bit")      # one standalone model (vLLM, transformers)
    >>> save(model, tokenizer, "my-ollama", method="ollama")           # merged + Modelfile for `ollama create`
    >>> save(model, tokenizer, "my-gguf", method="gguf", quantization="q4_k_m")  # needs llama.cpp

Every save writes into a temporary folder beside the target and renames it into place at the end,
so a crash half-way leaves any earlier save untouched. `load_model(folder)` reads any of them back.
"""

import copy
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ftlib import exporting
from ftlib.demo import DEMO_ALIAS, tiny_model_path
from ftlib.errors import FtlibError

# Ollama, GGUF and Hub steps live in ftlib.exporting; their names stay importable from here too.
from ftlib.exporting import (  # noqa: F401
    GGUF_QUANTIZATIONS, GGUF_STEPS, chat_template_parts, find_llama_cpp, ollama_modelfile, ollama_stops, push_to_hub,
    render_with_parts, resolve_token,
)

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


def _is_peft(model):
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


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
    if _is_peft(model):
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
    if not _is_peft(model):
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


# ----------------------------------------------------------------------------- merging


def _pick_dtype(model, dtype):
    if dtype is not None:
        if isinstance(dtype, str):
            dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}.get(
                dtype, getattr(torch, dtype, None))
        if dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise FtlibError(f"dtype must be 'float16', 'bfloat16' or 'float32', got {dtype!r}: "
                             "bfloat16 for modern GPUs, float16 for a T4 or Ollama")
        return dtype
    # A 4-bit or 8-bit model computes in its quantization config's compute dtype; other models in the
    # dtype of their (never quantised) embedding matrix.
    quantization = getattr(model.config, "quantization_config", None)
    compute = getattr(quantization, "bnb_4bit_compute_dtype", None)
    if isinstance(quantization, dict):
        compute = quantization.get("bnb_4bit_compute_dtype")
    if isinstance(compute, str):
        compute = getattr(torch, compute, None)
    if compute in (torch.float16, torch.bfloat16):
        return compute
    return model.get_input_embeddings().weight.dtype


def _full_precision_weight(module):
    """A layer's weight as a float32 tensor, de-quantising 4-bit or 8-bit weights first."""
    from peft.utils.integrations import dequantize_module_weight

    weight = getattr(module, "weight", None)
    state = getattr(weight, "quant_state", None)
    if state is not None and getattr(state, "packing_format_for_cpu", False):
        return _dequantize_cpu_packed(weight.data, state)
    return dequantize_module_weight(module).detach().float()


def _dequantize_cpu_packed(packed, state, block_n=32):
    """De-quantise a 4-bit weight that bitsandbytes repacked for its CPU kernel, without touching it.

    On CPUs with AVX512-BF16, bitsandbytes rearranges 4-bit weights on the first eval forward and keeps
    the block scales in bfloat16. Reading the codes and scales exactly as that kernel does gives the
    weight the model really computed with, so the merged model matches it.
    """
    rows, half = packed.shape
    columns = half * 2
    pairs = packed.reshape(-1, block_n)
    # Each byte holds a low and a high nibble; the kernel's layout interleaves blocks of block_n rows.
    codes = torch.cat([pairs & 0xF, (pairs >> 4) & 0xF], dim=-1)
    codes = codes.reshape(rows // block_n, half, block_n, 2).transpose(-3, -2).reshape(rows, columns)
    scales = state.absmax.T.float()  # (rows, columns / blocksize)
    values = state.code.float().to(codes.device)[codes.long()]
    return values * scales.repeat_interleave(state.blocksize, dim=1)


def _lora_layer_tensors(name, layer):
    """The merged weight (and bias) of one LoRA layer, computed in float32 beside the live model."""
    base_layer = layer.get_base_layer()
    weight = _full_precision_weight(base_layer)
    bias = base_layer.bias.detach().float() if getattr(base_layer, "bias", None) is not None else None
    if not layer.disable_adapters:
        for adapter in layer.active_adapters:
            if adapter in getattr(layer, "merged_adapters", []):
                continue  # already inside the base weight
            if adapter not in layer.lora_A and adapter not in getattr(layer, "lora_embedding_A", {}):
                continue
            if adapter in getattr(layer, "lora_variant", {}):
                raise FtlibError(
                    f"layer {name} uses a LoRA variant (e.g. DoRA) that ftlib does not merge: "
                    "save with method='lora', or merge with peft's model.merge_and_unload()"
                )
            weight = weight + layer.get_delta_weight(adapter).detach().float().to(weight.device)
            if getattr(layer, "lora_bias", {}).get(adapter):
                bias = bias + layer.lora_B[adapter].bias.detach().float() * layer.scaling[adapter]
    yield f"{name}.weight", weight
    if bias is not None:
        yield f"{name}.bias", bias
    for parameter_name, parameter in base_layer.named_parameters(recurse=False):
        if parameter_name not in ("weight", "bias"):
            yield f"{name}.{parameter_name}", parameter.detach()


def _merged_tensors(model):
    """(name, tensor) for every weight of the model with its adapters merged, named as the base expects."""
    from peft.tuners.lora import LoraLayer
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import ModulesToSaveWrapper

    root = model.get_base_model() if _is_peft(model) else model
    skip = None
    for name, module in root.named_modules():
        if skip is not None and name.startswith(skip + "."):
            continue
        prefix = f"{name}." if name else ""
        if isinstance(module, LoraLayer):
            skip = name
            yield from _lora_layer_tensors(name, module)
        elif isinstance(module, ModulesToSaveWrapper):
            skip = name
            inner = module.original_module
            if not module.disable_adapters and module.active_adapters[0] in module.modules_to_save:
                inner = module.modules_to_save[module.active_adapters[0]]
            for parameter_name, parameter in inner.named_parameters():
                yield prefix + parameter_name, parameter.detach()
        elif isinstance(module, BaseTunerLayer):
            raise FtlibError(
                f"layer {name} is a {type(module).__name__}, an adapter type ftlib does not merge: "
                "save with method='lora'"
            )
        else:
            for parameter_name, parameter in module.named_parameters(recurse=False):
                if parameter_name == "weight" and type(parameter).__name__ in ("Params4bit", "Int8Params"):
                    yield prefix + parameter_name, _full_precision_weight(module)
                else:
                    yield prefix + parameter_name, parameter.detach()
            for buffer_name, buffer in module.named_buffers(recurse=False):
                if buffer_name not in module._non_persistent_buffers_set:
                    yield prefix + buffer_name, buffer.detach()


def _parse_size(size):
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*([\d.]+)\s*([kKmMgG]?)B?\s*", str(size))
    if not match:
        raise FtlibError(f"max_shard_size must be bytes or like '5GB', got {size!r}")
    return int(float(match.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[match.group(2).lower()])


def _write_merged(model, tokenizer, folder, dtype, max_shard_size):
    """Write the merged weights as safetensors shards, plus config, generation config and tokenizer."""
    from safetensors.torch import save_file

    root = model.get_base_model() if _is_peft(model) else model
    dtype = _pick_dtype(root, dtype)
    input_weight = root.get_input_embeddings().weight
    output_layer = root.get_output_embeddings()
    output_name = next((name for name, module in root.named_modules() if module is output_layer), None)
    output_key = f"{output_name}.weight" if output_name else None
    text_config = root.config.get_text_config() if hasattr(root.config, "get_text_config") else root.config
    tied = bool(getattr(text_config, "tie_word_embeddings", False))

    limit = _parse_size(max_shard_size)
    shards, current, current_bytes, weight_map, total = [], {}, 0, {}, 0
    dropped_tied = False

    def flush():
        nonlocal current, current_bytes
        if current:
            name = f"model-part-{len(shards):05d}.safetensors"
            save_file(current, str(folder / name), metadata={"format": "pt"})
            shards.append((name, list(current)))
            current, current_bytes = {}, 0

    for key, tensor in _merged_tensors(model):
        # A tied output matrix is the input matrix itself: store it once, as transformers does.
        if tied and key == output_key and tensor.data_ptr() == input_weight.data_ptr():
            dropped_tied = True
            continue
        if tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensor = tensor.to("cpu").contiguous().clone()  # own memory: no sharing with the live model
        size = tensor.numel() * tensor.element_size()
        if current and current_bytes + size > limit:
            flush()
        current[key] = tensor
        current_bytes += size
        total += size
    flush()

    if len(shards) == 1:
        os.replace(folder / shards[0][0], folder / "model.safetensors")
    else:
        for index, (name, keys) in enumerate(shards, start=1):
            final = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
            os.replace(folder / name, folder / final)
            weight_map.update({key: final for key in keys})
        index_file = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index_file, indent=2) + "\n")

    config = copy.deepcopy(root.config)
    for attribute in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attribute):
            delattr(config, attribute)
    config.dtype = dtype
    if tied and not dropped_tied:  # an adapter changed one side of the tied pair: keep both, untied
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        text_config.tie_word_embeddings = False
        config.tie_word_embeddings = False
    if not getattr(config, "architectures", None):
        config.architectures = [type(root).__name__]
    config.save_pretrained(str(folder))
    generation_config = getattr(root, "generation_config", None)
    if generation_config is not None:
        try:
            generation_config.save_pretrained(str(folder))
        except ValueError:  # a model's own inconsistent sampling defaults: keep just the token ids
            from transformers import GenerationConfig

            GenerationConfig(
                bos_token_id=generation_config.bos_token_id, eos_token_id=generation_config.eos_token_id,
                pad_token_id=generation_config.pad_token_id,
            ).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return dtype



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
    if _is_peft(model):
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
    method="lora",  # lora: small adapter | merged_16bit: standalone model | ollama | gguf (needs llama.cpp)
    overwrite=False,  # True replaces an earlier save in `path`; other files are never deleted
    dtype=None,  # merged methods: None = the precision the model computes in; 'float16' halves float32
    max_shard_size="5GB",  # merged methods: largest safetensors file; 5GB suits the Hub and vLLM
    quantization="q8_0",  # gguf: 'q8_0' (near-lossless) and/or 'q4_k_m' (smaller); a list gives several
    llama_cpp_dir=None,  # gguf: your llama.cpp checkout; None looks at LLAMA_CPP_DIR and PATH
    system_prompt=None,  # ollama / gguf: an optional SYSTEM line for the Modelfile
    push_to_hub=False,  # also upload the saved folder to the Hugging Face Hub
    repo_id=None,  # with push_to_hub: 'your-name/model-name'
    token=None,  # with push_to_hub: None uses HF_TOKEN, a saved login, or asks (hidden)
    private=True,  # with push_to_hub: a new repository starts private
    verbose=True,  # print what was written and its size
    hub_api=None,  # with push_to_hub: a huggingface_hub.HfApi-like object (tests pass a fake)
):
    """Save a fine-tuned model so `load_model(path)` (or vLLM, Ollama, llama.cpp) can run it.

    Returns a SaveResult listing each file and its size. Writes to a temporary folder beside `path`
    and renames it into place at the end: a failure leaves any earlier save intact.

    Example:
        >>> save(model, tokenizer, "my-adapter")  # doctest: +SKIP
    """
    if method not in METHODS:
        raise FtlibError(f"unknown save method {method!r}: use one of {', '.join(METHODS)} "
                         "('lora' is smallest; 'merged_16bit' for vLLM; 'ollama' for Ollama)")
    if push_to_hub and not repo_id:
        raise FtlibError("push_to_hub=True needs repo_id='your-name/model-name'")
    target = _check_target(path, overwrite)
    gguf = exporting.gguf_plan(quantization, llama_cpp_dir) if method == "gguf" else None  # tools first
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
            notes.append(f"Load it with: load_model({str(target)!r})  (base: {base})")
        else:
            dtype_written = _write_merged(model, tokenizer, temporary, dtype, max_shard_size)
            try:
                base = base_model_name(model)
            except FtlibError:  # a model built in memory has no name to record
                base = "unknown"
            if dtype_written == torch.float32:
                notes.append("Weights are float32, the precision the model was loaded in; dtype='float16' "
                             "halves the size.")
            notes.append(f"Load it with: load_model({str(target)!r}); serve with: vllm serve {target}")
        if method in ("ollama", "gguf"):
            notes += exporting.write_ollama_files(temporary, tokenizer, target, system_prompt, gguf)
        (temporary / "README.md").write_text(model_card(model, method, base, dtype_written))
        _swap_into_place(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    result = SaveResult(path=target, method=method, files=_listing(target), notes=notes)
    if verbose:
        print(result)
    if push_to_hub:  # after the local save is complete, so a failed upload loses nothing
        result.repo_url = exporting.push_to_hub(target, repo_id, token=token, private=private, api=hub_api)
        if verbose:
            print(f"Pushed to {result.repo_url}")
    return result
