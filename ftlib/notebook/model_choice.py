"""Which model a notebook uses: the tiny demo model offline, a real small model on a GPU with internet.

The environment variable FTLIB_MODEL overrides the choice with any Hugging Face model id or local
folder, e.g. `FTLIB_MODEL=Qwen/Qwen2.5-1.5B-Instruct` or `FTLIB_MODEL=/content/my-model`.
FTLIB_LOAD_IN_4BIT=0 or 1 overrides whether it is loaded in 4 bits (default: 4 bits on a GPU only,
since 4-bit weights need a GPU to be fast).
"""

import os
import socket
from dataclasses import dataclass, field

from ftlib.demo import DEMO_ALIAS, use_one_cpu_thread

TINY_MODEL = DEMO_ALIAS
# Small, openly licensed, has a chat template, fits a free 16 GB T4 with room to train.
GPU_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
MODEL_VARIABLE = "FTLIB_MODEL"
FOUR_BIT_VARIABLE = "FTLIB_LOAD_IN_4BIT"

# The tiny model is pretrained for 3 minutes only, so it needs a larger learning rate and more steps
# than a real model to learn a new task; a real model starts from the guide's defaults.
TINY_RECIPE = {"learning_rate": 2e-3, "max_steps": 120}
REAL_RECIPE = {"learning_rate": 2e-4, "max_steps": 60}


@dataclass
class ModelChoice:
    """The model a notebook trains, why it was picked, and settings suited to it."""

    name: str
    reason: str
    on_gpu: bool
    load_in_4bit: bool
    recipe: dict = field(default_factory=dict)  # learning_rate and max_steps that work for this model

    @property
    def tiny(self):
        return self.name == TINY_MODEL

    def __repr__(self):
        four_bit = "4-bit" if self.load_in_4bit else "16/32-bit"
        return (
            f"Model: {self.name} ({four_bit}, {'GPU' if self.on_gpu else 'CPU'}): {self.reason}.\n"
            f"Set the environment variable {MODEL_VARIABLE} to a model id or folder to use another."
        )


def choose_model(gpu_model=GPU_MODEL):
    """Pick the notebook's model: $FTLIB_MODEL, else `gpu_model` on a GPU with internet, else ftlib-tiny.

    Example:
        >>> choice = choose_model(); model, tokenizer = load_model(choice.name, load_in_4bit=choice.load_in_4bit)
    """
    on_gpu = _has_gpu()
    chosen = os.environ.get(MODEL_VARIABLE, "").strip()
    if chosen:
        name, reason = chosen, f"set by {MODEL_VARIABLE}"
    elif not on_gpu:
        name, reason = TINY_MODEL, "no GPU found, so the tiny demo model that trains in a minute on a CPU"
    elif not hub_reachable():
        name, reason = TINY_MODEL, "a GPU but no connection to the Hugging Face Hub, so the bundled tiny demo model"
    else:
        name, reason = gpu_model, "a GPU and the Hugging Face Hub are available"
    load_in_4bit = on_gpu and name != TINY_MODEL
    if os.environ.get(FOUR_BIT_VARIABLE, "").strip() in ("0", "1"):
        load_in_4bit = os.environ[FOUR_BIT_VARIABLE].strip() == "1"
        reason += f"; 4-bit set by {FOUR_BIT_VARIABLE}"
    recipe = dict(TINY_RECIPE if name == TINY_MODEL else REAL_RECIPE)
    if name == TINY_MODEL and not on_gpu:
        use_one_cpu_thread()
    return ModelChoice(name=name, reason=reason, on_gpu=on_gpu, load_in_4bit=load_in_4bit, recipe=recipe)


def hub_reachable(timeout=2.0):
    """True when the Hugging Face Hub answers and offline mode is not switched on."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or os.environ.get("TRANSFORMERS_OFFLINE", "0") not in ("", "0"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def _has_gpu():
    import torch

    return torch.cuda.is_available()
