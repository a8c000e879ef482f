"""Speed and memory options that keep the math: applied by load_model, add_lora and train.

Every option here changes how the numbers are computed, never which numbers: on the same batch the loss
matches the plain recipe within bf16 rounding (tests/test_acceleration.py checks the ones that exist on
a CPU; benchmarks/run.py checks the rest on a GPU). Options that need a GPU switch themselves off
elsewhere, silently, so the same notebook runs on a laptop and on Colab.

What ftlib does on a CUDA GPU, and why:

- Fused kernels: Liger's SwiGLU and RoPE, and PyTorch's own RMSNorm (Liger's for models whose norm is not
  Llama's), each one kernel instead of several PyTorch ops, so fewer passes over the activations. The
  fused loss head comes from TRL's trainer, which never builds the (batch, length, vocabulary) logits.
- Norms and embeddings stay in the compute dtype: the usual `prepare_model_for_kbit_training` casts
  them to float32, which costs memory and an extra cast in every layer and changes nothing a LoRA
  adapter learns.
- Gradient checkpointing in PyTorch's "reentrant" form: the first forward pass runs without autograd,
  so no per-tensor hooks: less Python work per layer, which counts because a large GPU's training step
  waits on Python. Or "offload" (ftlib/speed/offloaded_checkpoint.py): the same, with each layer's saved
  input copied to CPU memory and back without the CPU waiting, which frees most of the GPU memory the layer
  inputs took (an 8B model at 2 x 2,048 tokens keeps 32 of them, 33.5 MB each; two return buffers stay).
  Neither needs float32 inputs. Only as many layers as the GPU's memory needs are recomputed, the rest keep
  their activations (add_lora's "auto"; ftlib/speed/memory_budget.py chooses, `checkpoint_layers` applies).
- Padding-free batching, where asked: sequences of a batch are laid end to end instead of padded to the
  longest, so no compute is spent on padding (the attention mask keeps them apart).
- 8-bit AdamW: optimizer state in 2 bytes per trainable number instead of 8.
- Fused LoRA projections (ftlib/speed/fused_lora.py): the adapter's product and the frozen layer's output are
  summed by the matrix multiply itself, instead of PEFT's copy, scale and add passes, and projections of the
  same input (q, k and v; gate and up) are computed together; when checkpointing recomputes a layer, the MLP's
  last multiply, whose output nothing reads then, is left out. Their 4-bit weights are unpacked by one kernel
  of ftlib's (ftlib/speed/nf4_kernel.py), bit for bit as bitsandbytes does, in fewer launches.
- Growable CUDA memory segments (PyTorch's `expandable_segments`), so less reserved memory is lost to
  fragmentation; skipped when the user configured PyTorch's allocator themselves.
- Attention that suits the data's lengths: PyTorch prefers cuDNN's attention on a Hopper GPU, which plans
  anew for each new sequence length. Rows of many lengths make most batches a new shape, so while such
  data trains, PyTorch's flash attention runs instead.

Each option has a name in ftlib/speed/switches.py; FTLIB_SPEED_OFF=name1,name2 switches those off and
FTLIB_PLAIN=1 all of them (to compare, or to rule them out). benchmarks/README.md has what each brings.
"""

import contextlib
import dataclasses
import importlib.util
import os
import sys
import types
import warnings

import torch

from ftlib.speed.switches import on, plain_requested  # noqa: F401  (plain_requested: FTLIB_PLAIN=1)

# Attention implementations that keep sequences laid end to end apart (transformers reads the
# boundaries from position_ids and builds a block-diagonal mask, or passes them to flash attention).
PADDING_FREE_ATTENTION = {"sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"}


def model_device_type(model):
    """'cuda', 'cpu', ... for the device holding the model's first parameter. Example: `model_device_type(model)`."""
    for parameter in model.parameters():
        return parameter.device.type
    return "cpu"


def liger_available():
    """True when Liger's Triton kernels can run here (liger-kernel installed and a CUDA GPU present)."""
    if not torch.cuda.is_available():
        return False
    return importlib.util.find_spec("liger_kernel") is not None and importlib.util.find_spec("triton") is not None


def _base_model(model):
    """The transformers model under a PEFT wrapper (or the model itself)."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def _dispatch_by_device(fast, plain):
    """A function that runs `fast` on CUDA tensors and `plain` elsewhere (Triton kernels need CUDA)."""

    def apply_rotary_pos_emb(q, k, cos, sin, *args, **kwargs):
        return (fast if q.is_cuda else plain)(q, k, cos, sin, *args, **kwargs)

    apply_rotary_pos_emb._ftlib_plain = plain
    return apply_rotary_pos_emb


# Models whose RMSNorm is y = weight * (x / rms(x)), which PyTorch's fused kernel computes (in float32, as they
# do). A call of it costs the CPU a fraction of Liger's Triton launch (benchmarks/launch_costs.py times both),
# which counts where a step waits on Python.
TORCH_RMS_NORM_MODELS = {"llama", "mistral", "qwen2", "qwen3"}


def torch_rms_norm_for(model_type):
    """True when PyTorch's fused RMSNorm, not Liger's, serves this model type. Example: `torch_rms_norm_for("qwen2")`"""
    return model_type in TORCH_RMS_NORM_MODELS and hasattr(torch.nn.functional, "rms_norm") and on("torch_rms_norm")


def _fused_rms_norm_forward(self, hidden_states):
    """A Llama-style RMSNorm in one PyTorch kernel, when input and weight share a dtype on a GPU.

    Autocast leaves `rms_norm` in the input's dtype (benchmarks/launch_costs.py checks it on a GPU).
    """
    weight = self.weight
    if not hidden_states.is_cuda or hidden_states.dtype != weight.dtype:
        return type(self).forward(self, hidden_states)
    return torch.nn.functional.rms_norm(hidden_states, weight.shape, weight, self.variance_epsilon)


def apply_liger_kernels(model):
    """Swap in fused RMSNorm, SwiGLU and RoPE kernels on this model instance; returns their names.

    Example: `apply_liger_kernels(model)  # ['rms_norm', 'swiglu', 'rope']`

    The RMSNorm is PyTorch's on the models of `TORCH_RMS_NORM_MODELS` (unless the switch `torch_rms_norm` is
    off) and Liger's on the others; the rest are Liger's. The fused linear cross-entropy stays off: TRL's
    trainer already computes the loss in chunks without the full logits, and refuses Liger's version. Liger
    patches some classes module-wide; those are put back afterwards so a model loaded later on the CPU still
    gets the plain classes, and the RoPE function (shared by every model of the architecture) runs Liger's
    kernel on CUDA tensors only.
    """
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN, _apply_liger_kernel_to_instance

    base = _base_model(model)
    model_type = getattr(base.config, "model_type", None)
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        return []
    module = sys.modules.get(type(base).__module__)
    saved = {name: getattr(module, name) for name in dir(module)} if module is not None else {}
    plain_rope = saved.get("apply_rotary_pos_emb")
    plain_rope = getattr(plain_rope, "_ftlib_plain", plain_rope)  # already wrapped by an earlier load
    torch_norms = torch_rms_norm_for(model_type)
    _apply_liger_kernel_to_instance(
        model=base, rope=True, rms_norm=not torch_norms, swiglu=True, cross_entropy=False,
        fused_linear_cross_entropy=False
    )
    if torch_norms:
        for norm in base.modules():
            if type(norm).__name__.endswith("RMSNorm") and hasattr(norm, "variance_epsilon"):
                norm.forward = types.MethodType(_fused_rms_norm_forward, norm)
    applied = ["rms_norm", "swiglu"]
    if module is not None:
        fast_rope = getattr(module, "apply_rotary_pos_emb", None)
        for name, value in saved.items():  # undo module-wide class swaps; the instance keeps its kernels
            if name != "apply_rotary_pos_emb" and getattr(module, name, None) is not value:
                setattr(module, name, value)
        if plain_rope is not None and fast_rope is not None and fast_rope is not saved.get("apply_rotary_pos_emb"):
            module.apply_rotary_pos_emb = _dispatch_by_device(fast_rope, plain_rope)
            applied.append("rope")
        elif plain_rope is not None and fast_rope is not None:
            module.apply_rotary_pos_emb = saved["apply_rotary_pos_emb"]
    return applied


def after_load(model, settings):
    """Adjust a freshly loaded model for fast training; returns the model. Nothing changes on the CPU.

    Example: `model = after_load(model, model.ftlib_settings)`

    Records what it switched on in `model.ftlib_acceleration` (a list of names, empty on a CPU).
    """
    applied = []
    # The same kernels suit LoRA, QLoRA and full fine-tuning, so `settings` does not change the choice.
    if on("liger") and model_device_type(model) == "cuda" and liger_available():
        try:
            applied = apply_liger_kernels(model)
        except Exception as error:  # a liger-kernel release that does not fit this transformers: train plainly
            warnings.warn(f"Liger kernels not applied ({type(error).__name__}: {error}); training without them",
                          stacklevel=2)
    model.ftlib_acceleration = applied
    return model


def use_expandable_segments():
    """Switch PyTorch's CUDA allocator to growable segments before a model loads; True if it did.

    Example: `use_expandable_segments()`

    Left alone on a CPU, with the switch `expandable_segments` off, and when PYTORCH_CUDA_ALLOC_CONF or
    PYTORCH_ALLOC_CONF is set (the user's own allocator settings win).
    """
    if not on("expandable_segments") or not torch.cuda.is_available():
        return False
    if os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or os.environ.get("PYTORCH_ALLOC_CONF"):
        return False
    setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None)
    setter = setter or getattr(torch.cuda.memory, "_set_allocator_settings", None)
    if setter is None:  # a PyTorch without a runtime switch: nothing to do
        return False
    setter("expandable_segments:True")
    return True


def fuse_lora(model):
    """On a CUDA GPU, give the model's LoRA projections the fused training path; returns how many.

    Example: `fuse_lora(model)  # 224 for an 8B Llama with adapters on all seven projections`

    Generation keeps PEFT's own forward (see ftlib/speed/fused_lora.py); nothing changes on a CPU or with the
    switch `fused_lora` off.
    """
    if not on("fused_lora") or model_device_type(model) != "cuda":
        return 0
    from ftlib.speed.fused_lora import fuse_lora_layers

    count = fuse_lora_layers(model)
    base = _base_model(model)
    applied = list(getattr(base, "ftlib_acceleration", []))
    if count and "fused_lora" not in applied:
        base.ftlib_acceleration = applied + ["fused_lora"]
    return count


def enable_gradient_checkpointing(model, mode=True):
    """Trade compute for memory: recompute activations in the backward pass.

    Example: `enable_gradient_checkpointing(model, "offload")`

    mode: True = reentrant checkpointing (the least Python work per layer); "offload" = the same, with each
    layer's input kept in CPU memory until the backward pass (one layer input less per layer on the GPU; on a
    CPU it is plain reentrant checkpointing; True while the switch `offload` is off); False = off (fastest,
    most memory); "auto" = "offload" until train recomputes only the layers its memory budget needs
    (ftlib/speed/memory_budget.py, `checkpoint_layers`). All forms give the same loss and gradients; the frozen
    embedding layer's output is made to
    require gradients so the checkpointed layers pass gradients on to the adapters.
    """
    from ftlib.checks import check_checkpointing

    check_checkpointing("use_gradient_checkpointing", mode, auto=True)
    chosen = mode
    if mode == "auto":  # every layer recomputed until train picks the layers by its memory budget
        mode = "offload"
    if mode == "offload" and not on("offload"):
        mode = True
    base = _base_model(model)
    base._ftlib_gradient_checkpointing = "auto" if chosen == "auto" else mode
    if not mode:
        if is_checkpointing(base):
            _switch_checkpointing(base, enable=False)
        return model
    _switch_checkpointing(base, enable=True)
    from ftlib.speed.offloaded_checkpoint import offloaded_checkpoint, reentrant_checkpoint

    for module in base.modules():  # both report their recomputation, so fused LoRA can leave out unread work
        if getattr(module, "gradient_checkpointing", False):
            module._gradient_checkpointing_func = offloaded_checkpoint if mode == "offload" else reentrant_checkpoint
    # With a frozen embedding layer the checkpointed blocks would see inputs without gradients.
    base.enable_input_require_grads()
    base.config.use_cache = False
    return model


def is_checkpointing(model):
    """Whether the model recomputes activations in the backward pass. Example: `is_checkpointing(model)`.

    transformers 5.23 renamed "gradient checkpointing" to "activation checkpointing" and warns on the old
    names; the new name is used where it exists, the old one on older versions.
    """
    base = _base_model(model)
    if hasattr(type(base), "is_activation_checkpointing"):
        return base.is_activation_checkpointing
    return getattr(base, "is_gradient_checkpointing", False)


def _switch_checkpointing(base, enable):
    renamed = hasattr(base, "activation_checkpointing_enable")  # transformers >= 5.23
    if not enable:
        return base.activation_checkpointing_disable() if renamed else base.gradient_checkpointing_disable()
    if renamed:
        return base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    return base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})


def checkpoint_layers(model, recomputed_layers=None, offloaded_layers=0):
    """Recompute the first `recomputed_layers` decoder layers (None: all), the first `offloaded_layers` of them with
    their inputs in CPU memory; the others keep their activations. Keeps the mode "auto" for the next run.

    Example: `checkpoint_layers(model, recomputed_layers=24, offloaded_layers=0)  # what a 15 GB plan may choose`

    ftlib/speed/memory_budget.py chooses the numbers; each layer gives the same loss and gradients either way.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    from ftlib.speed.offloaded_checkpoint import offloaded_checkpoint, reentrant_checkpoint

    base = _base_model(model)
    auto = getattr(base, "_ftlib_gradient_checkpointing", None) == "auto"
    layers = [module for module in base.modules() if isinstance(module, GradientCheckpointingLayer)]
    text_config = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    # every layer, as "offload" sets it up; also where the checkpointed blocks are not just the decoder layers
    if recomputed_layers is None or len(layers) != getattr(text_config, "num_hidden_layers", None):
        enable_gradient_checkpointing(model, "offload")
    else:
        enable_gradient_checkpointing(model, bool(recomputed_layers))
        for index, layer in enumerate(layers):
            layer.gradient_checkpointing = index < recomputed_layers
            layer._gradient_checkpointing_func = (offloaded_checkpoint if index < offloaded_layers and on("offload")
                                                  else reentrant_checkpoint)
    if auto:
        base._ftlib_gradient_checkpointing = "auto"
    return model


def trainer_checkpointing_off():
    """The TrainingArguments setting that keeps the trainer's own checkpointing off (add_lora set it up already).

    Example: `SFTConfig(**trainer_checkpointing_off())`

    transformers 5.23 renamed the field `gradient_checkpointing` to `activation_checkpointing` and warns on the old one.
    """
    from transformers import TrainingArguments

    fields = {field.name for field in dataclasses.fields(TrainingArguments)}
    return {"activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing": False}


@contextlib.contextmanager
def dependencies_reading_old_checkpointing_names():
    """While PEFT wraps a model or TRL trains, leave out the warnings their own code causes on transformers >= 5.23.

    Example: `with dependencies_reading_old_checkpointing_names(): get_peft_model(model, config)`

    transformers 5.23 renamed gradient checkpointing to activation checkpointing and warns on the old names.
    PEFT 0.21 and TRL 1.16 (the newest releases) still call them: PEFT's PeftModel reads
    `is_gradient_checkpointing`; TRL's DPO, KTO and GRPO trainers switch it off and on around their reference
    passes. The old names live in those packages, not in ftlib or the user's code, so only those messages are
    filtered, and only for those calls; ftlib's own code uses the new names where they exist.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`(is_)?gradient_checkpointing(_enable|_disable)?` is deprecated",
                                category=FutureWarning)
        yield


def gradient_checkpointing_mode(model):
    """The mode enable_gradient_checkpointing set up last, or None. Example: `gradient_checkpointing_mode(model)`."""
    return getattr(_base_model(model), "_ftlib_gradient_checkpointing", None)


def supports_padding_free(model):
    """True when the model's attention keeps sequences laid end to end apart. Example: `supports_padding_free(model)`."""
    implementation = getattr(_base_model(model).config, "_attn_implementation", None) or ""
    return implementation.split("@")[0].split(":")[0] in PADDING_FREE_ATTENTION


def trainer_settings(model, padding_free=False):
    """Extra `trl.SFTConfig` keyword arguments for this model and device.

    Example: `SFTConfig(output_dir="outputs", **trainer_settings(model))`

    On a CUDA GPU: 8-bit AdamW; on a CPU, or with the switch `adamw_8bit` off: plain AdamW. padding_free=True
    (on any device, when the attention supports it and the switch `padding_free` is on) adds padding-free
    batching, which needs `max_length=None` in SFTConfig (TRL does not truncate then), so the caller must have
    cut every row to max_seq_length already; these settings override the caller's own.
    """
    eight_bit = (on("adamw_8bit") and model_device_type(model) == "cuda"
                 and importlib.util.find_spec("bitsandbytes") is not None)
    settings = {"optim": "adamw_8bit" if eight_bit else "adamw_torch"}
    if padding_free and on("padding_free") and supports_padding_free(model):
        settings["padding_free"] = True
        settings["max_length"] = None
    return settings


def lengths_vary(datasets, max_seq_length):
    """True when the rows of these tokenized datasets (None skipped) have more than one length once cut.

    Example: `lengths_vary([train_dataset, eval_dataset], 2048)`

    Reads the lengths from Arrow, so a large dataset's token ids are never copied into Python lists.
    """
    import pyarrow.compute as compute

    cut = set()
    for dataset in datasets:
        if dataset is None or len(dataset) == 0:
            continue
        bounds = compute.min_max(compute.list_value_length(dataset.with_format("arrow")["input_ids"]))
        cut |= {min(bounds["min"].as_py(), max_seq_length), min(bounds["max"].as_py(), max_seq_length)}
    return len(cut) > 1


@contextlib.contextmanager
def attention_suited_to(model, datasets, max_seq_length):
    """Within the block, PyTorch's cuDNN attention is off when the rows' lengths vary (a CUDA model only).

    Example: `with attention_suited_to(model, [train_dataset], 2048): trainer.train()`

    cuDNN's attention builds a plan for each new sequence length, which costs more than the step itself;
    flash attention, PyTorch's next choice, needs none. Fixed-length rows keep cuDNN's (faster) kernels.
    The setting is PyTorch-wide, so it is put back as it was when the block ends, however it ends. Nothing
    changes with the switch `varied_length_attention` off.
    """
    enabled = torch.backends.cuda.cudnn_sdp_enabled()
    switch = (enabled and on("varied_length_attention") and model_device_type(model) == "cuda"
              and lengths_vary(datasets, max_seq_length))
    if switch:
        torch.backends.cuda.enable_cudnn_sdp(False)
    try:
        yield switch
    finally:
        if switch:
            torch.backends.cuda.enable_cudnn_sdp(enabled)
