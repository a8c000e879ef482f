"""Recompute only what the memory requires: how many decoder layers a run recomputes, and how many of their
inputs wait in CPU memory, chosen from a memory budget with `estimate_memory`.

Gradient checkpointing trades time for memory: a recomputed layer keeps only its input (33.5 MB for an 8B
model at 2 x 2,048 tokens) instead of its working set (about 0.6 GB), and costs a second forward pass through
it (about a quarter of the layer's training time). On a GPU with memory to spare that is time thrown away,
so with add_lora's default `use_gradient_checkpointing="auto"`, `train` picks per run:

1. the fewest recomputed layers whose estimate fits the budget (recomputation saves the most memory per
   second spent: a layer's working set for a quarter of its time), the first layers recomputed and the last
   ones keeping their activations (the backward pass frees those before it recomputes anything);
2. only when every layer is recomputed and it still does not fit, the fewest of their inputs moved to CPU
   memory (a layer input for a few percent of the layer's time), the earliest layers first (their inputs wait
   longest, so the copies have the most time).

The budget is `train(..., memory_budget_gb=...)`, or else the memory PyTorch may use on the GPU (its per-process
cap, the memory it holds and what is free), and a plan must fit it less SAFETY_MARGIN. A budget that even the
leanest plan (every layer recomputed, every input offloaded) exceeds raises FtlibError naming what to change;
without an explicit budget the leanest plan runs anyway, with a warning, since the estimate is approximate.
On a CPU without an explicit budget, nothing changes: every layer is recomputed, as before.

The choice is printed in one line and kept in `model.ftlib_settings["memory_plan"]` and `history.memory_plan`:

    recomputing 23 of 32 layers to fit 15.0 GB (estimated peak 13.4 GB)

Example:
    >>> print(plan_recomputation("llama-3.1-8b", "qlora", memory_budget_gb=15))
"""

import warnings
from dataclasses import dataclass, field

from ftlib.checks import check_positive, check_range
from ftlib.errors import FtlibError
from ftlib.speed.memory import GB, estimate_memory, model_shape

SAFETY_MARGIN = 0.10  # 0.05-0.2: the share of the budget a plan leaves spare for the estimate's error
# (benchmarks/README.md lists the estimate against measured peaks) and for memory outside training


@dataclass
class RecomputationPlan:
    """Which layers a run recomputes: the first `recomputed_layers` of `num_layers`, the first
    `offloaded_layers` of those with their inputs in CPU memory. Example: `str(plan)`, `plan.as_dict()`."""

    recomputed_layers: int
    offloaded_layers: int
    num_layers: int
    memory_budget_gb: float  # what the plan had to fit, before the safety margin
    estimated_gb: float  # estimate_memory's total for the plan
    budget_from: str = "memory_budget_gb"  # or "free GPU memory"
    safety_margin: float = SAFETY_MARGIN
    fits: bool = True  # False: even the leanest plan's estimate exceeds the budget
    details: dict = field(default_factory=dict)

    @property
    def use_gradient_checkpointing(self):
        """The add_lora mode this plan amounts to where it covers every layer alike, else "partial"."""
        if self.recomputed_layers == 0:
            return False
        if self.recomputed_layers < self.num_layers or 0 < self.offloaded_layers < self.num_layers:
            return "partial"
        return "offload" if self.offloaded_layers else True

    def as_dict(self):
        return {"recomputed_layers": self.recomputed_layers, "offloaded_layers": self.offloaded_layers,
                "num_layers": self.num_layers, "memory_budget_gb": round(self.memory_budget_gb, 2),
                "estimated_gb": round(self.estimated_gb, 2), "budget_from": self.budget_from,
                "safety_margin": self.safety_margin, "fits": self.fits, "line": str(self)}

    def __str__(self):
        offloaded = (f", {self.offloaded_layers} of their inputs in CPU memory," if self.offloaded_layers else "")
        source = "" if self.budget_from == "memory_budget_gb" else f" of {self.budget_from}"
        may_not = "" if self.fits else ": may not fit"
        return (f"recomputing {self.recomputed_layers} of {self.num_layers} layers{offloaded} to fit "
                f"{self.memory_budget_gb:.1f} GB{source} (estimated peak {self.estimated_gb:.1f} GB{may_not})")


def choose_layers(num_layers, estimated_gb, target_gb, allow_offload=True):
    """(recomputed, offloaded) layers: the first plan, from fastest to leanest, whose estimate fits `target_gb`.

    `estimated_gb(recomputed, offloaded)` gives a plan's estimate. The order: 0, 1, ... num_layers layers
    recomputed with inputs on the GPU, then all recomputed with 1, 2, ... inputs offloaded (none with
    allow_offload=False). Returns None when not even the leanest fits.

    Example: `choose_layers(32, lambda k, m: 30 - 0.6 * k - 0.03 * m, 15)  # (25, 0)`
    """
    for recomputed in range(num_layers + 1):
        if estimated_gb(recomputed, 0) <= target_gb:
            return recomputed, 0
    for offloaded in range(1, num_layers + 1) if allow_offload else ():
        if estimated_gb(num_layers, offloaded) <= target_gb:
            return num_layers, offloaded
    return None


def plan_recomputation(model_name_or_config, method="qlora", *, memory_budget_gb, safety_margin=SAFETY_MARGIN,
                       allow_offload=True, explicit_budget=True, budget_from="memory_budget_gb", **estimate_options):
    """The RecomputationPlan that fits `memory_budget_gb` with the fewest recomputed layers, then the fewest
    offloaded inputs; a pure calculation, nothing is loaded.

    `estimate_options` are estimate_memory's (max_seq_length, per_device_train_batch_size, r, optim, dtype, ...).
    With explicit_budget=True a budget that even the leanest plan exceeds raises FtlibError naming the fix;
    otherwise the leanest plan comes back with fits=False.

    Example:
        >>> print(plan_recomputation("llama-3.1-8b", "qlora", memory_budget_gb=15, max_seq_length=2048))
        recomputing 23 of 32 layers to fit 15.0 GB (estimated peak 13.4 GB)
    """
    # GB in all, as estimate_memory's total counts them (the CUDA context included): a GPU's size fits here
    check_positive("memory_budget_gb", memory_budget_gb, "the GPU's memory in GB, e.g. 15 for a T4", whole=False)
    check_range("safety_margin", safety_margin, "0.1", low=0, high=1, high_open=True)
    num_layers = model_shape(model_name_or_config)["num_hidden_layers"]
    estimates = {}

    def estimated_gb(recomputed, offloaded):
        if (recomputed, offloaded) not in estimates:
            estimates[recomputed, offloaded] = estimate_memory(
                model_name_or_config, method, recomputed_layers=recomputed, offloaded_layers=offloaded,
                use_gradient_checkpointing=bool(recomputed), **estimate_options)
        return estimates[recomputed, offloaded].total_gb

    target = memory_budget_gb * (1 - safety_margin)
    chosen = choose_layers(num_layers, estimated_gb, target, allow_offload)
    fits = True
    if chosen is None:  # the leanest plan, if it fits without the margin
        chosen = (num_layers, num_layers if allow_offload else 0)
        fits = estimated_gb(*chosen) <= memory_budget_gb
        if not fits and explicit_budget:
            raise FtlibError(_too_small(memory_budget_gb, estimated_gb(*chosen), method, estimate_options))
    plan = RecomputationPlan(recomputed_layers=chosen[0], offloaded_layers=chosen[1], num_layers=num_layers,
                             memory_budget_gb=memory_budget_gb, estimated_gb=estimated_gb(*chosen),
                             budget_from=budget_from, safety_margin=safety_margin, fits=fits)
    plan.details = estimates[chosen].as_dict()
    return plan


def _too_small(budget_gb, leanest_gb, method, options):
    """The message for a budget below the leanest plan: what to change, smallest change first."""
    fixes = []
    batch = options.get("per_device_train_batch_size", 2)
    if batch > 1:
        fixes.append(f"per_device_train_batch_size=1 (with gradient_accumulation_steps={4 * batch} keeps the "
                     "effective batch)")
    fixes.append(f"max_seq_length={options.get('max_seq_length', 2048) // 2}")
    if method not in ("qlora", "4bit"):
        fixes.append("load_model(..., load_in_4bit=True)")
    fixes.append("a smaller model, or a larger memory_budget_gb")
    return (f"memory_budget_gb={budget_gb:g} is below what this run needs even with every layer recomputed and "
            f"every layer input in CPU memory (estimated {leanest_gb:.1f} GB): try {', or '.join(fixes)}")


# ----------------------------------------------------------------------------- the run's own plan


def gpu_budget_gb(device_index=None):
    """GB of GPU memory this process may use for training: PyTorch's per-process cap, or the memory it holds
    plus what is free on the device when that is less, plus the CUDA context estimate_memory counts.
    None without a CUDA GPU. Example: `gpu_budget_gb()`."""
    import torch

    if not torch.cuda.is_available():
        return None
    from ftlib.speed.memory import CUDA_CONTEXT

    index = torch.cuda.current_device() if device_index is None else device_index
    free, total = torch.cuda.mem_get_info(index)
    fraction = getattr(torch.cuda, "get_per_process_memory_fraction", lambda index: 1.0)(index)
    held = torch.cuda.memory_reserved(index)
    return (min(total * fraction, held + free) + CUDA_CONTEXT) / GB


def model_method(model):
    """estimate_memory's method for a loaded model: "qlora", "lora_8bit", "lora" or "full"."""
    if (getattr(model, "ftlib_settings", None) or {}).get("full_finetuning"):
        return "full"
    kinds = {type(parameter).__name__ for parameter in model.parameters()}
    if "Params4bit" in kinds:
        return "qlora"
    return "lora_8bit" if "Int8Params" in kinds else "lora"


def longest_row(datasets, max_seq_length):
    """The longest row of these tokenized datasets once cut to max_seq_length; max_seq_length when unknown."""
    longest = 0
    for dataset in datasets:
        if dataset is None or len(dataset) == 0:
            continue
        if "input_ids" not in dataset.column_names:
            return max_seq_length
        import pyarrow.compute as compute

        longest = max(longest, compute.max(compute.list_value_length(
            dataset.with_format("arrow")["input_ids"])).as_py())
    return min(longest or max_seq_length, max_seq_length)


def plan_for_model(model, *, per_device_train_batch_size, max_seq_length, optim, memory_budget_gb=None,
                   on_gpu=None):
    """The plan for training this model (add_lora's "auto"), or None where nothing should change (a CPU
    without an explicit budget). Example: `plan_for_model(model, per_device_train_batch_size=2, ...)`."""
    from ftlib.speed import acceleration, switches

    on_gpu = acceleration.model_device_type(model) == "cuda" if on_gpu is None else on_gpu
    explicit = memory_budget_gb is not None
    budget = memory_budget_gb if explicit else (gpu_budget_gb() if on_gpu else None)
    if budget is None:
        return None
    options = estimate_options(model, per_device_train_batch_size, max_seq_length, optim)
    try:  # a shape or adapter layout the estimate does not know: every layer recomputed, as before
        estimate_memory(_config(model), model_method(model), **options)
    except FtlibError as error:
        if explicit:
            warnings.warn(f"memory_budget_gb is not applied, every layer is recomputed: {error}", stacklevel=3)
        return None
    plan = plan_recomputation(
        _config(model), model_method(model), memory_budget_gb=budget, explicit_budget=explicit,
        budget_from="memory_budget_gb" if explicit else "free GPU memory", allow_offload=switches.on("offload"),
        **options)
    if not plan.fits:
        warnings.warn(f"{plan}: training goes on with every layer recomputed and its input in CPU memory; if it "
                      "runs out of memory, try per_device_train_batch_size=1 or a shorter max_seq_length",
                      stacklevel=3)
    return plan


def check_forced_mode(model, mode, *, memory_budget_gb, per_device_train_batch_size, max_seq_length, optim):
    """Raise FtlibError when a mode add_lora forced (True, False, "offload") exceeds an explicit budget."""
    estimate = estimate_memory(_config(model), model_method(model), use_gradient_checkpointing=mode or False,
                               **estimate_options(model, per_device_train_batch_size, max_seq_length, optim))
    if estimate.total_gb > memory_budget_gb:
        raise FtlibError(
            f"add_lora(..., use_gradient_checkpointing={mode!r}) needs about {estimate.total_gb:.1f} GB, more than "
            f"memory_budget_gb={memory_budget_gb:g}: use add_lora's default use_gradient_checkpointing='auto' to "
            "recompute as many layers as the budget needs, or 'offload' for the least memory")


def estimate_options(model, per_device_train_batch_size, max_seq_length, optim):
    """estimate_memory's keyword arguments for this model and these train settings."""
    from ftlib.speed import acceleration
    from ftlib.speed.memory import EIGHT_BIT_OPTIMIZERS, FULL_PRECISION_OPTIMIZERS

    lora = (getattr(model, "ftlib_settings", None) or {}).get("lora") or {}
    if optim is None:
        optim = acceleration.trainer_settings(model)["optim"]
    known = optim in EIGHT_BIT_OPTIMIZERS + FULL_PRECISION_OPTIMIZERS
    dtype = next((parameter.dtype for parameter in model.parameters() if parameter.is_floating_point()), None)
    options = dict(max_seq_length=max_seq_length, per_device_train_batch_size=per_device_train_batch_size,
                   optim=optim if known else None, dtype=str(dtype).replace("torch.", "") if dtype else None)
    if lora:
        options.update(r=lora["r"], target_modules=tuple(lora["target_modules"]))
    return options


def _config(model):
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    return base.config


def plan_training(model, datasets, *, per_device_train_batch_size, max_seq_length, optim, memory_budget_gb=None,
                  verbose=True):
    """What train does before training: with add_lora's "auto", choose the plan, set the layers up, print the
    line and keep it in model.ftlib_settings["memory_plan"]; with a forced mode, check it against an explicit
    budget. Returns the plan's dict, or None where nothing was chosen.

    Example: `plan_training(model, [train_dataset], per_device_train_batch_size=2, max_seq_length=2048, optim=None)`
    """
    from ftlib.speed import acceleration

    check_positive("memory_budget_gb", memory_budget_gb, "None (the GPU's free memory) or the GPU's memory in GB, "
                   "e.g. 15 for a T4", whole=False, allow_none=True)
    mode = acceleration.gradient_checkpointing_mode(model)
    length = longest_row(datasets, max_seq_length)
    if mode != "auto":
        if memory_budget_gb is not None:
            check_forced_mode(model, mode, memory_budget_gb=memory_budget_gb,
                              per_device_train_batch_size=per_device_train_batch_size, max_seq_length=length,
                              optim=optim)
        return None
    plan = plan_for_model(model, per_device_train_batch_size=per_device_train_batch_size, max_seq_length=length,
                          optim=optim, memory_budget_gb=memory_budget_gb)
    if plan is None:  # a CPU without a budget: every layer recomputed, as add_lora set it up
        acceleration.checkpoint_layers(model, recomputed_layers=None)
        return None
    acceleration.checkpoint_layers(model, plan.recomputed_layers, plan.offloaded_layers)
    if verbose:
        print(plan)
    settings = plan.as_dict()
    settings["tokens_per_row"] = length  # the longest row, which the plan was made for
    model.ftlib_settings = dict(getattr(model, "ftlib_settings", {}), memory_plan=settings)
    return settings
