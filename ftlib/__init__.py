"""ftlib: learn and do LLM fine-tuning.

The whole path in six calls:

    >>> from ftlib import load_model, add_lora, format_dataset, train, generate, save
    >>> model, tokenizer = load_model("ftlib-tiny")
    >>> model = add_lora(model)
    >>> history = train(model, tokenizer, format_dataset(rows, tokenizer))
    >>> generate(model, tokenizer, "Does this headline ...?")
    >>> save(model, tokenizer, "my-adapter")

Names are imported on first use, so `import ftlib` stays quick and works before torch is needed.
"""

import importlib
import logging

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "load_model": "ftlib.models",
    "add_lora": "ftlib.lora",
    "format_dataset": "ftlib.data",
    "show_example": "ftlib.data",
    "length_report": "ftlib.data",
    "train": "ftlib.training",
    "diagnose": "ftlib.training",
    "TrainingHistory": "ftlib.training",
    "generate": "ftlib.generation",
    "chat": "ftlib.generation",
    "stream": "ftlib.generation",
    "evaluate": "ftlib.evaluation",
    "preference_accuracy": "ftlib.training.preference",  # after train(..., method="dpo")
    "evaluate_rewards": "ftlib.training.grpo",  # before and after train(..., method="grpo")
    "format_reward": "ftlib.training.rewards",  # ready reward functions for method="grpo"
    "exact_answer_reward": "ftlib.training.rewards",
    "close_answer_reward": "ftlib.training.rewards",
    "length_guard": "ftlib.training.rewards",
    "perplexity": "ftlib.training.pretraining",  # after train(..., method="pretrain")
    "compare": "ftlib.evaluation",
    "run_harness": "ftlib.harness",  # needs the harness extra: pip install "ftlib[harness]"
    "save": "ftlib.export",
    "push_to_hub": "ftlib.export",
    "estimate_memory": "ftlib.speed.memory",
    "launch": "ftlib.training.distributed",  # several processes (GPUs) from a notebook
    "plan_recomputation": "ftlib.speed.memory_budget",
    "FtlibError": "ftlib.errors",
    "FtlibFileNotFoundError": "ftlib.errors",
    "FtlibPermissionError": "ftlib.errors",
    "FtlibOSError": "ftlib.errors",
}

__all__ = sorted(_EXPORTS)

# bitsandbytes warns on every CPU import that an optional kernel package is missing; 4-bit works without it.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ftlib' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
