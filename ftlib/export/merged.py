"""Merged weights: the adapters folded into the base, de-quantised, written as one standalone model."""

import copy
import json
import os
import re
from pathlib import Path

import torch

from ftlib.errors import FtlibError

# Written beside merged weights, so load_model knows they are already the fine-tune's exact weights and
# loads them unquantised by default (re-quantising them to 4 bits would change the answers).
SAVE_RECORD = "ftlib_save.json"


def merged_save_dtype(folder):
    """The stored precision ('float32', 'bfloat16', ...) when ftlib.save wrote merged weights in `folder`, else None.

    Example:
        >>> merged_save_dtype("my-model")  # doctest: +SKIP
        'float16'
    """
    try:
        record = json.loads((Path(folder) / SAVE_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record.get("dtype") if isinstance(record, dict) and record.get("weights") == "merged" else None


def is_peft(model):
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def pick_dtype(model, dtype):
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

    root = model.get_base_model() if is_peft(model) else model
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


def write_merged(model, tokenizer, folder, dtype, max_shard_size):
    """Write the merged weights as safetensors shards, plus config, generation config and tokenizer."""
    from safetensors.torch import save_file

    root = model.get_base_model() if is_peft(model) else model
    dtype = pick_dtype(root, dtype)
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
    record = {"weights": "merged", "dtype": str(dtype).replace("torch.", "")}
    (folder / SAVE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return dtype
