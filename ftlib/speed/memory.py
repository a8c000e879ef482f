"""Step 5 of the guide: how much GPU memory a fine-tune needs, before anything is loaded, and what it used.

    >>> from ftlib import estimate_memory
    >>> print(estimate_memory("llama-3.1-8b", "qlora", max_seq_length=2048, per_device_train_batch_size=2))

The estimate adds up what training keeps on the GPU:

- weights: the frozen base model. 4-bit (QLoRA) stores about 0.52 bytes a weight (0.5 for the NF4 code,
  the rest for its scales); 16-bit stores 2. Embeddings, the output layer and norms stay 16-bit.
- adapters: LoRA's two small matrices per adapted layer, rank x (inputs + outputs) numbers, in float32.
- gradients: one number per trainable number (float32 for adapters, 16-bit for full fine-tuning).
- optimizer: AdamW keeps two numbers per trainable number: 8 bytes in float32, 2 bytes in 8-bit AdamW (`optim`).
- activations: what the forward pass keeps for the backward pass. With gradient checkpointing only each
  layer's input (batch x length x hidden x 2 bytes a layer) stays, in CPU memory with "offload", plus one
  layer's working set while it is recomputed; without it, every layer's working set stays. A partial plan
  (`recomputed_layers`, `offloaded_layers`: what train's memory budget chooses, ftlib/speed/memory_budget.py)
  lies in between. Grows linearly with batch x length.
- overhead: the CUDA context (about 0.5 GB, outside PyTorch's own count) and allocator slack.

The per-token working-set constants were fitted to the peaks benchmarks/run.py measures (benchmarks/README.md
lists the estimate against each measured case); treat the result as +/-20%.
"""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ftlib.checks import check_checkpointing, check_positive, check_range
from ftlib.demo import DEMO_ALIAS
from ftlib.errors import FtlibError

GB = 2**30
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Architecture numbers of well-known models (from their published config.json files), so an estimate
# needs no download. Keys are matched against a normalised Hub id, e.g. "meta-llama/Llama-3.1-8B-Instruct".
KNOWN_MODELS = {
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "llama-3.2-3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
    "llama-3.1-70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                          num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
    "mistral-7b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=32768, tie_word_embeddings=False),
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
    "phi-3-mini": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=32064, tie_word_embeddings=False),
}
# Other spellings people use for the same models.
ALIASES = {"llama-3-8b": "llama-3.1-8b", "llama-3.1-8b": "llama-3.1-8b", "meta-llama-3.1-8b": "llama-3.1-8b",
           "meta-llama-3-8b": "llama-3.1-8b", "llama-3.3-70b": "llama-3.1-70b", "mistral-7b-v0.3": "mistral-7b",
           "phi-3-mini-4k": "phi-3-mini", "phi-3.5-mini": "phi-3-mini"}

METHODS = {"qlora": "qlora", "4bit": "qlora", "lora": "lora", "16bit": "lora", "lora_8bit": "lora_8bit",
           "8bit": "lora_8bit", "full": "full"}
WEIGHT_BYTES = {"qlora": 0.516, "lora_8bit": 1.03, "lora": 2.0, "full": 2.0}  # per weight of the big layers

# Fitted constants (see the module docstring; fitted on Llama-3.1-8B and 3.2-1B shapes, QLoRA, 2 x 2048).
# Working set of one decoder layer while it is recomputed, per token: HIDDEN_TERMS x hidden +
# INTERMEDIATE_TERMS x intermediate numbers of 2 bytes (gate, up, activation and product dominate).
HIDDEN_TERMS = 4
INTERMEDIATE_TERMS = 3.4
LOSS_HIDDEN_BYTES = 20  # bytes per token and hidden unit around the loss (fp32 copies, gradient)
OFFLOAD_IN_FLIGHT = 2  # layer inputs on the GPU with offloaded checkpointing: the one recomputed, the next on its way
CUDA_CONTEXT = 0.5 * GB  # the driver's own share, which PyTorch does not count
ALLOCATOR_SLACK = 0.05  # reserved but unused blocks, as a fraction of the rest


@dataclass
class MemoryEstimate:
    """GPU memory a fine-tune needs, in bytes per part; `total` adds them. Example: `estimate.total_gb`."""

    weights: float
    adapters: float
    gradients: float
    optimizer: float
    activations: float
    overhead: float
    details: dict = field(default_factory=dict)

    PARTS = ("weights", "adapters", "gradients", "optimizer", "activations", "overhead")

    @property
    def total(self):
        return sum(getattr(self, part) for part in self.PARTS)

    @property
    def total_gb(self):
        return self.total / GB

    @property
    def pytorch_reserved_gb(self):
        """The part PyTorch reserves (what torch.cuda.max_memory_reserved reports): total minus the CUDA context."""
        return (self.total - CUDA_CONTEXT) / GB

    def as_dict(self):
        """Every part in GB, plus the total. Example: `estimate.as_dict()["weights"]`."""
        out = {part: round(getattr(self, part) / GB, 3) for part in self.PARTS}
        out["total"] = round(self.total_gb, 3)
        return out

    def fits(self, gpu_memory_gb):
        """True when the estimate fits a GPU of that many GB. Example: `estimate.fits(16)  # a T4`."""
        return self.total_gb <= gpu_memory_gb

    def __str__(self):
        lines = [f"{self.details.get('model', 'model')}, {self.details.get('method', '')}, "
                 f"{self.details.get('per_device_train_batch_size')} x {self.details.get('max_seq_length')} tokens"]
        for part in self.PARTS:
            lines.append(f"  {part:<12}{getattr(self, part) / GB:8.2f} GB")
        lines.append(f"  {'total':<12}{self.total_gb:8.2f} GB")
        return "\n".join(lines)

    def _repr_html_(self):
        rows = "".join(f"<tr><td>{part}</td><td style='text-align:right'>{getattr(self, part) / GB:.2f} GB</td></tr>"
                       for part in self.PARTS)
        return (f"<table><tr><th colspan=2>{self.details.get('model', 'model')}, {self.details.get('method', '')}"
                f"</th></tr>{rows}<tr><td><b>total</b></td><td style='text-align:right'><b>{self.total_gb:.2f} GB"
                f"</b></td></tr></table>")


def estimate_memory(
    model_name_or_config,
    method="qlora",  # "qlora" (4-bit base + LoRA), "lora" (16-bit base + LoRA), "lora_8bit", or "full"
    *,
    max_seq_length=2048,  # activations grow linearly with it
    per_device_train_batch_size=2,  # activations grow linearly with it too; gradient accumulation costs no memory
    r=16,  # LoRA rank, 8-64: adapters are small either way, a few hundred MB at most
    target_modules=PROJECTIONS,  # the layers that get adapters
    use_gradient_checkpointing="offload",  # every layer recomputed, inputs in CPU memory (the leanest); True:
    # inputs on the GPU; False: every layer's activations stay
    recomputed_layers=None,  # a partial plan: how many decoder layers (the first ones) are recomputed, the rest
    # keeping their activations; None = all of them with checkpointing, none without (train's memory budget sets it)
    offloaded_layers=None,  # how many of the recomputed layers keep their input in CPU memory; None = all of them
    # with "offload", none otherwise
    optim=None,  # train's optimizer: None = its GPU default "adamw_8bit" (2 bytes a trainable number);
    # "adamw_torch" keeps float32 state (8 bytes)
    dtype=None,  # load_model's compute precision: None = auto (16-bit on a GPU); "float32" doubles activations
    float32_upcasting=False,  # True models the plain recipe's prepare_model_for_kbit_training (fp32 norms/embeddings)
    num_gpus=1,  # GPUs of the run, one process each (torchrun, ftlib.launch); the estimate is per GPU
    fsdp=None,  # train's fsdp: None = DDP, a whole copy on every GPU; True (or "full_shard") splits weights,
    # gradients and optimizer state over the GPUs; "shard_grad_op" splits gradients and optimizer state only
):
    """Estimate the peak GPU memory of a fine-tune before loading anything; returns a MemoryEstimate.

    `model_name_or_config` is a known name ("llama-3.1-8b", "meta-llama/Llama-3.2-1B-Instruct", ...),
    "ftlib-tiny", a folder with a config.json, a transformers config, or a dict of its numbers.

    Example:
        >>> estimate_memory("llama-3.1-8b", "qlora", max_seq_length=2048, per_device_train_batch_size=2).total_gb
    """
    shape = model_shape(model_name_or_config)
    method = _check_method(method)
    check_positive("max_seq_length", max_seq_length, "max_seq_length=2048")
    check_positive("per_device_train_batch_size", per_device_train_batch_size, "per_device_train_batch_size=2")
    check_positive("r", r, "r=16 (8-64 typical)")
    check_checkpointing("use_gradient_checkpointing", use_gradient_checkpointing)
    recomputed_layers, offloaded_layers = _check_plan(shape["num_hidden_layers"], use_gradient_checkpointing,
                                                      recomputed_layers, offloaded_layers)
    eight_bit_state = _check_optim(optim)
    dtype_bytes = _dtype_bytes(dtype)
    _check_sharding(num_gpus, fsdp)

    hidden, inter, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    vocab = shape["vocab_size"]
    head_dim = shape.get("head_dim") or hidden // shape["num_attention_heads"]
    kv = shape.get("num_key_value_heads") or shape["num_attention_heads"]
    # (inputs, outputs) of each projection of one decoder layer
    sizes = {"q_proj": (hidden, shape["num_attention_heads"] * head_dim), "k_proj": (hidden, kv * head_dim),
             "v_proj": (hidden, kv * head_dim), "o_proj": (shape["num_attention_heads"] * head_dim, hidden),
             "gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden)}
    layer_weights = sum(i * o for i, o in sizes.values()) * layers
    embedding_weights = vocab * hidden * (1 if shape.get("tie_word_embeddings") else 2)
    norm_weights = (2 * layers + 1) * hidden
    small_weights = embedding_weights + norm_weights  # never quantised
    total_weights = layer_weights + small_weights

    small_bytes = 4 if float32_upcasting and method != "full" else dtype_bytes
    weights = layer_weights * WEIGHT_BYTES[method] + small_weights * small_bytes
    if method == "full":
        trainable = total_weights
        adapters = 0.0
        gradients = trainable * dtype_bytes
        optimizer_bytes = trainable * (2 if eight_bit_state else 2 * dtype_bytes)
    else:
        unknown = [name for name in target_modules if name not in sizes]
        if unknown:
            raise FtlibError(f"target_modules {unknown} are not projections this estimate knows: use some of {PROJECTIONS}")
        trainable = r * sum(sum(sizes[name]) for name in target_modules) * layers
        adapters = trainable * 4  # PEFT keeps adapters in float32 next to a 16-bit or 4-bit base
        gradients = trainable * 4
        optimizer_bytes = trainable * (2 if eight_bit_state else 8)

    tokens = per_device_train_batch_size * max_seq_length
    residual_bytes = 4 if float32_upcasting else dtype_bytes  # upcast embeddings make the residual stream fp32
    layer_input = tokens * hidden * residual_bytes
    # One layer's working set while it is recomputed and differentiated (MLP outputs dominate), plus the
    # dequantised copy of the largest 4/8-bit weight.
    layer_working_set = tokens * (HIDDEN_TERMS * hidden + INTERMEDIATE_TERMS * inter) * dtype_bytes
    if float32_upcasting:
        layer_working_set *= 2  # float32 norm outputs and residuals
    if method in ("qlora", "lora_8bit"):
        layer_working_set += max(i * o for i, o in sizes.values()) * dtype_bytes
    # The loss: TRL's fused head works through (up to 4,096 tokens) x (up to 32,768 words) tiles, never the
    # whole (tokens x vocabulary) logits; plus float32 copies of the final hidden states and their gradient.
    loss_working_set = min(tokens, 4096) * min(vocab, 32768) * dtype_bytes + tokens * hidden * LOSS_HIDDEN_BYTES
    activations = _activations(layers, recomputed_layers, offloaded_layers, layer_input, layer_working_set,
                               loss_working_set)

    one_layer = layer_weights / layers * WEIGHT_BYTES[method]
    weights, adapters, gradients, optimizer_bytes = per_gpu(weights, adapters, gradients, optimizer_bytes,
                                                            num_gpus=num_gpus, fsdp=fsdp, layer_bytes=one_layer)
    subtotal = weights + adapters + gradients + optimizer_bytes + activations
    overhead = CUDA_CONTEXT + ALLOCATOR_SLACK * subtotal
    return MemoryEstimate(
        weights=weights, adapters=adapters, gradients=gradients, optimizer=optimizer_bytes,
        activations=activations, overhead=overhead,
        details={"model": shape.get("name", "model"), "method": method, "max_seq_length": max_seq_length,
                 "per_device_train_batch_size": per_device_train_batch_size, "parameters": total_weights,
                 "trainable_parameters": trainable, "use_gradient_checkpointing": use_gradient_checkpointing,
                 "recomputed_layers": recomputed_layers, "offloaded_layers": offloaded_layers,
                 "num_hidden_layers": layers,
                 "optim": optim or "adamw_8bit", "dtype_bytes": dtype_bytes, "float32_upcasting": float32_upcasting,
                 "num_gpus": num_gpus, "fsdp": fsdp},
    )


def per_gpu(weights, adapters, gradients, optimizer, *, num_gpus=1, fsdp=None, layer_bytes=0.0):
    """(weights, adapters, gradients, optimizer) bytes on each GPU of a run over `num_gpus` GPUs.

    Example: `per_gpu(16e9, 0, 16e9, 16e9, num_gpus=2, fsdp=True, layer_bytes=4.4e8)`

    DDP (fsdp None) keeps a whole copy on every GPU, and its communication buckets a second copy of the
    gradients. FSDP splits what it shards into num_gpus equal parts; with "full_shard" (True) a GPU gathers
    one decoder layer's whole weights while it computes it and the next one's in advance (2 x layer_bytes);
    "shard_grad_op" keeps every layer's whole weights from the forward pass until the backward pass.
    """
    if num_gpus == 1:
        return weights, adapters, gradients, optimizer
    if not fsdp:
        return weights, adapters, 2 * gradients, optimizer
    if fsdp == "shard_grad_op":
        return (weights / num_gpus + weights, adapters / num_gpus + adapters, gradients / num_gpus,
                optimizer / num_gpus)
    return (weights / num_gpus + 2 * layer_bytes, adapters / num_gpus, gradients / num_gpus, optimizer / num_gpus)


def _check_sharding(num_gpus, fsdp):
    check_positive("num_gpus", num_gpus, "1, or the number of GPUs the run uses (2 for Kaggle's T4 x2)")
    if not any(fsdp is choice or (isinstance(fsdp, str) and fsdp == choice)
               for choice in (None, False, True, "full_shard", "shard_grad_op")):
        raise FtlibError(f"fsdp must be None, True, 'full_shard' or 'shard_grad_op', got {fsdp!r}: try fsdp=True "
                         "(weights, gradients and optimizer state split over the GPUs) or None (a copy per GPU)")
    if fsdp and num_gpus == 1:
        raise FtlibError(f"fsdp={fsdp!r} splits the model over several GPUs, but num_gpus=1: pass num_gpus=2 (or "
                         "more), or leave fsdp out for one GPU")


def _check_plan(layers, mode, recomputed, offloaded):
    """(recomputed layers, offloaded layers) of this plan: the numbers given, or what `mode` means for all layers."""
    if recomputed is None:
        recomputed = layers if mode else 0
    if offloaded is None:
        offloaded = recomputed if mode == "offload" else 0
    check_range("recomputed_layers", recomputed, f"a whole number from 0 to {layers} (the model's layers)",
                low=0, high=layers, whole=True)
    check_range("offloaded_layers", offloaded, f"a whole number from 0 to recomputed_layers={recomputed} (only "
                "a recomputed layer's input can wait in CPU memory)", low=0, high=recomputed, whole=True)
    return recomputed, offloaded


def _activations(layers, recomputed, offloaded, layer_input, working_set, loss_working_set):
    """Activation bytes at the peak when the first `recomputed` of `layers` layers are recomputed (the first
    `offloaded` of them with their inputs in CPU memory) and the rest keep their working sets.

    The layers that keep their activations are the last ones, so the backward pass frees them before it
    recomputes anything: the peak is at the loss (their activations, the kept inputs, the loss's working set)
    or during a recomputation (the kept inputs and one layer's working set). A kept layer costs its working set
    less a share of the overlap with the loss's, so that no recomputation gives the fitted total
    (layers - 1) x working set + max(working set, loss working set) and full recomputation the fitted
    inputs + max(working set, loss working set).
    """
    on_gpu_inputs = (recomputed - offloaded) + min(offloaded, OFFLOAD_IN_FLIGHT)  # the rest wait on the CPU
    kept_inputs = on_gpu_inputs * layer_input
    kept_layer = working_set - min(working_set, loss_working_set) / layers
    at_the_loss = kept_inputs + (layers - recomputed) * kept_layer + loss_working_set
    recomputing = kept_inputs + working_set if recomputed else 0
    return max(at_the_loss, recomputing)


def model_shape(model_name_or_config):
    """The architecture numbers an estimate needs, from a name, folder, config or dict.

    Example: `model_shape("llama-3.1-8b")["hidden_size"]  # 4096`
    """
    source = model_name_or_config
    if isinstance(source, dict):
        shape = dict(source)
    elif hasattr(source, "to_dict") and hasattr(source, "hidden_size"):  # a transformers config
        text_config = source.get_text_config() if hasattr(source, "get_text_config") else source
        shape = text_config.to_dict()
        shape.setdefault("name", getattr(source, "name_or_path", "") or getattr(source, "model_type", "model"))
    elif isinstance(source, (str, os.PathLike)):
        shape = _shape_from_name(str(source))
    else:
        raise FtlibError(
            f"model_name_or_config must be a model name, a folder, a transformers config or a dict, "
            f"got {type(source).__name__}: try estimate_memory('llama-3.1-8b', 'qlora')"
        )
    needed = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    missing = [key for key in needed if not shape.get(key)]
    if missing:
        raise FtlibError(f"the model description lacks {missing}: pass a full config.json or a config object")
    return shape


def _shape_from_name(name):
    if name == DEMO_ALIAS:
        from ftlib.demo import tiny_model_path

        name = str(tiny_model_path())
    path = Path(name).expanduser()
    if (path / "config.json").is_file():
        config = json.loads((path / "config.json").read_text())
        config = config.get("text_config", config)
        return dict(config, name=path.name)
    key = normalise_name(name)
    if key in KNOWN_MODELS:
        return dict(KNOWN_MODELS[key], name=key)
    raise FtlibError(
        f"no architecture numbers for {name!r}: use one of {sorted(KNOWN_MODELS)}, a folder with a "
        "config.json, or transformers.AutoConfig.from_pretrained(name) (which downloads only the config)"
    )


def normalise_name(name):
    """'meta-llama/Llama-3.1-8B-Instruct' -> 'llama-3.1-8b' (or the name lowered when nothing is known).

    Example: `normalise_name("unsloth/Llama-3.2-1B-Instruct-bnb-4bit")  # 'llama-3.2-1b'`
    """
    key = name.strip().lower().rstrip("/").rsplit("/", 1)[-1]
    for suffix in ("-bnb-4bit", "-unsloth", "-instruct", "-chat", "-hf", "-it", "-base"):
        key = key.replace(suffix, "")
    if key in ALIASES:
        return ALIASES[key]
    for known in sorted(KNOWN_MODELS, key=len, reverse=True):
        if key == known or key.startswith(known + "-") or key.startswith("meta-" + known):
            return known
    return key


# train's `optim` names (transformers' OptimizerNames) by the bytes of state they keep per trainable number:
# two numbers of 1 byte (8-bit) or two numbers in the trainable weights' precision (4 bytes each for adapters).
EIGHT_BIT_OPTIMIZERS = ("adamw_8bit", "adamw_bnb_8bit", "paged_adamw_8bit", "adamw_torch_8bit")
FULL_PRECISION_OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "paged_adamw_32bit")
DTYPE_BYTES = {"bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "half": 2, "float32": 4, "fp32": 4}


def _check_optim(optim):
    """True when `optim` keeps 8-bit state; None is train's GPU default, 8-bit AdamW."""
    if optim is None or optim in EIGHT_BIT_OPTIMIZERS:
        return True
    if optim in FULL_PRECISION_OPTIMIZERS:
        return False
    raise FtlibError(
        f"optim={optim!r} is not an optimizer this estimate knows: use one of train's optim names "
        f"{', '.join(EIGHT_BIT_OPTIMIZERS + FULL_PRECISION_OPTIMIZERS)}, or None for train's default (adamw_8bit)"
    )


def _dtype_bytes(dtype):
    """Bytes a number of load_model's `dtype` takes: None = auto, 16-bit on a GPU."""
    if dtype is None:
        return 2
    name = str(dtype).replace("torch.", "")
    if name not in DTYPE_BYTES:
        raise FtlibError(f"dtype must be None, 'bfloat16', 'float16' or 'float32', got {dtype!r}: "
                         "None estimates the 16-bit compute a GPU uses")
    return DTYPE_BYTES[name]


def _check_method(method):
    key = str(method).lower().replace("-", "_")
    if key not in METHODS:
        raise FtlibError(f"method must be one of 'qlora', 'lora', 'lora_8bit', 'full', got {method!r}: try 'qlora'")
    return METHODS[key]


@dataclass
class MemoryUsage:
    """Measured memory in GB: now and at the peak since the last reset. Example: `measured_usage().peak_reserved`."""

    device: str
    allocated: float
    reserved: float
    peak_allocated: float
    peak_reserved: float
    device_total: float

    def __str__(self):
        if self.device == "cpu":
            return f"CPU process memory: {self.reserved:.2f} GB now, peak {self.peak_reserved:.2f} GB"
        return (f"{self.device}: {self.allocated:.2f} GB allocated, {self.reserved:.2f} GB reserved now; peak "
                f"{self.peak_allocated:.2f} allocated, {self.peak_reserved:.2f} reserved of {self.device_total:.1f} GB")


def measured_usage(reset_peak=False):
    """Memory in use now and at its peak: the GPU's as PyTorch counts it, or this process's on a CPU.

    reset_peak=True starts a new peak after reading (measure one step: reset, run it, read again).

    Example:
        >>> print(measured_usage())
    """
    import torch

    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        usage = MemoryUsage(
            device=torch.cuda.get_device_name(index), allocated=torch.cuda.memory_allocated(index) / GB,
            reserved=torch.cuda.memory_reserved(index) / GB, peak_allocated=torch.cuda.max_memory_allocated(index) / GB,
            peak_reserved=torch.cuda.max_memory_reserved(index) / GB,
            device_total=torch.cuda.get_device_properties(index).total_memory / GB)
        if reset_peak:
            torch.cuda.reset_peak_memory_stats(index)
        return usage
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kilobytes on Linux
    now = peak
    try:
        with open("/proc/self/statm") as handle:
            now = int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / GB
    except OSError:
        pass
    return MemoryUsage(device="cpu", allocated=now, reserved=now, peak_allocated=peak, peak_reserved=peak,
                       device_total=os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / GB)
