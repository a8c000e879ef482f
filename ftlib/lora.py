"""Step 4 of the guide, the adapter half: attach LoRA adapters so only a small fraction of weights train."""

import torch

from ftlib.speed import acceleration
from ftlib.checks import check_checkpointing, check_flag, check_positive, check_range
from ftlib.errors import FtlibError

# The attention and MLP projections of Llama-style models: adapting all seven works best for most tasks.
ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def add_lora(
    model,
    *,
    r=16,  # rank, 4-64: more capacity to learn, more memory and a little more time
    lora_alpha=16,  # scale of the update, at least r: alpha/r multiplies what the adapter adds
    lora_dropout=0.0,  # 0-0.1: a little dropout fights over-fitting on small datasets; 0 is fastest
    target_modules=ALL_PROJECTIONS,  # which linear layers get adapters; fewer = fewer parameters
    use_rslora=False,  # rank-stabilised scaling alpha/sqrt(r): helps at high ranks (64+)
    use_gradient_checkpointing="offload",  # recompute every layer (~25% more time, much less memory), inputs kept in
    # CPU memory on a GPU; "auto": train recomputes only as many layers as the GPU's memory needs (train's
    # memory_budget_gb caps it); True keeps inputs on the GPU (32 x 33.5 MB for 8B at 2 x 2048); False: fastest
    seed=3407,  # the adapters' initial weights: the same seed gives the same start, so runs repeat exactly
):
    """Attach LoRA adapters to `model`, freeze everything else, and report what will train.

    Returns the model wrapped as a peft `PeftModel`; the trainable-parameter count is printed and kept in
    `model.ftlib_trainable_parameters` as (trainable, total).

    Example:
        >>> model = add_lora(model, r=16, lora_alpha=16)
        trainable parameters: 41,943,040 of 8,072,204,288 (0.52%)
    """
    if not isinstance(model, torch.nn.Module):
        raise FtlibError(
            f"add_lora needs the model that load_model returned, got {type(model).__name__}: "
            "model, tokenizer = load_model(...); model = add_lora(model)"
        )
    settings = getattr(model, "ftlib_settings", {})
    if settings.get("full_finetuning"):
        raise FtlibError(
            "this model was loaded with full_finetuning=True, which trains every weight, so LoRA adapters "
            "have no place on it: train it as it is, or reload with load_model(..., full_finetuning=False) "
            "to train LoRA adapters"
        )
    if hasattr(model, "peft_config"):
        raise FtlibError(
            "this model already has LoRA adapters (from add_lora or a saved adapter): train it as it is, "
            "or load the base model again with load_model to start fresh adapters"
        )
    check_positive("r", r, "r=16 (8-64 typical)")
    check_positive("lora_alpha", lora_alpha, f"lora_alpha={r} (at least the rank)", whole=False)
    check_range("lora_dropout", lora_dropout, "0.0 or 0.05", low=0, high=1, high_open=True)
    check_flag("use_rslora", use_rslora)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise FtlibError(f"seed must be a whole number, got {seed!r}: try seed=3407 (any fixed number repeats a run)")
    check_checkpointing("use_gradient_checkpointing", use_gradient_checkpointing, auto=True)  # before the model changes
    target_modules = _check_targets(model, target_modules)

    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=target_modules,
        use_rslora=use_rslora,
        bias="none",
        task_type="CAUSAL_LM",
    )
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    acceleration.enable_gradient_checkpointing(model, use_gradient_checkpointing)
    with torch.random.fork_rng(devices=[]), acceleration.dependencies_reading_old_checkpointing_names():
        torch.manual_seed(seed)
        model = get_peft_model(model, config)
    model.ftlib_settings = dict(settings, lora={
        "r": r, "lora_alpha": lora_alpha, "lora_dropout": lora_dropout,
        "target_modules": list(target_modules), "use_rslora": use_rslora,
    })
    trainable, total = model.get_nb_trainable_parameters()
    model.ftlib_trainable_parameters = (trainable, total)
    print(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")
    return model


def _check_targets(model, target_modules):
    if isinstance(target_modules, str):
        target_modules = [target_modules]
    if not isinstance(target_modules, (list, tuple, set)) or not all(isinstance(name, str) for name in target_modules):
        raise FtlibError(
            f"target_modules must be a list of layer names like ['q_proj', 'v_proj'], got {target_modules!r}: "
            "leave it out to adapt all seven projections"
        )
    target_modules = list(target_modules)
    linear_names = sorted({
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) or "Linear" in type(module).__name__
    } - {"lm_head"})
    missing = [name for name in target_modules if name not in linear_names]
    if missing or not target_modules:
        raise FtlibError(
            f"target_modules {missing or target_modules} are not linear layers of this model; "
            f"its linear layers are {linear_names}: pick from those"
        )
    return target_modules
