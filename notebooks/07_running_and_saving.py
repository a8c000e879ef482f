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
# # 07 · Running and saving
#
# **What you will learn**
#
# - generating answers: one prompt, a batch, streaming, and a multi-turn chat
# - saving a LoRA adapter, loading it back, and checking the answers are identical
# - exporting merged weights for vLLM and Ollama
# - pushing to the Hugging Face Hub without ever printing your token
#
# Runs top to bottom in about two minutes on a laptop CPU with the tiny demo model; nothing needs a click.

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
# - no GPU, or no internet: `ftlib-tiny`, the small demo model that ships with ftlib and trains in a
#   minute on a CPU;
# - a GPU with internet: a real small instruct model (`Qwen/Qwen2.5-0.5B-Instruct`);
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
# The demo task is the guide's example: *does this headline impact the company positively or negatively?*
# The held-out (test) headlines are about companies that never appear in training, so a high score there
# means the model learned the task rather than memorising companies.

# %%
# NBVAL_CHECK_OUTPUT
from ftlib.demo import load_headlines

train_rows, test_rows = load_headlines("train"), load_headlines("test")
print(len(train_rows), "training rows,", len(test_rows), "held-out rows")
print(train_rows[0])

# %% [markdown]
# Load the model and its tokenizer. `max_seq_length=256` is plenty for one-line headlines (the guide's
# 2048 is for real documents); the tiny model loads in full precision because 4-bit only pays off on a GPU.

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib import load_model

model, tokenizer = load_model(choice.name, max_seq_length=256, load_in_4bit=choice.load_in_4bit)
print(type(model).__name__, f"{model.num_parameters():,} parameters")

# %% [markdown]
# First, a fine-tuned model to run and save: the one-minute fine-tune of notebook 01.

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib import add_lora, format_dataset, train

model = add_lora(model, r=16, lora_alpha=16, use_gradient_checkpointing=not choice.tiny)
history = train(model, tokenizer, format_dataset(train_rows, tokenizer), output_dir="ftlib_outputs/07",
                **choice.recipe)
print(f"trained {history.steps[-1]} steps, final loss {history.final_loss:.2f}")

# %% [markdown]
# ## 1. Generation
#
# `generate` wraps a question in the chat template, writes the reply greedily (`temperature=0`, the same
# reply every time) and stops at the end-of-turn token. `max_new_tokens` caps the reply: a label needs a
# few tokens, a paragraph a few hundred.

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib import generate

question = test_rows[0]["question"]
print(question)
print("->", generate(model, tokenizer, question, max_new_tokens=8))

# %% [markdown]
# A list of prompts is generated as one batch (padded on the left), which is much faster than one by one:

# %%
# NBVAL_IGNORE_OUTPUT
questions = [row["question"] for row in test_rows[:4]]
for row, reply in zip(test_rows, generate(model, tokenizer, questions, max_new_tokens=8)):
    print(f"expected {row['answer']!r:12} got {reply!r}")

# %% [markdown]
# ## 2. Streaming
#
# `print_tokens=True` prints the reply piece by piece as it is written, which is what a chat interface shows
# (`stream(model, tokenizer, prompt)` yields the same pieces for a display of your own).
# Sampling (`temperature` above 0) gives varied replies; `seed` makes them repeatable.

# %%
# NBVAL_IGNORE_OUTPUT
reply = generate(model, tokenizer, question, max_new_tokens=8, print_tokens=True, temperature=0.7, seed=0)

# %% [markdown]
# ## 3. A multi-turn chat
#
# `chat` keeps the conversation in a list, so each reply sees everything said before.

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib import chat

conversation = []
for row in test_rows[1:3]:
    print("you:  ", row["question"].splitlines()[0])
    print("model:", chat(model, tokenizer, row["question"], conversation, max_new_tokens=8))
print(len(conversation), "messages in the conversation")

# %% [markdown]
# ## 4. Save the LoRA adapter, and load it back
#
# `save` with the default `method="lora"` writes only the adapters and the tokenizer: a few hundred KB for
# the tiny model, about 100 MB for an 8B one. The folder records which base model it belongs to, so
# `load_model(folder)` loads the base and then the adapter.

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib import load_model, save

saved = save(model, tokenizer, "ftlib_outputs/07/adapter", overwrite=True)

# %%
# NBVAL_IGNORE_OUTPUT
reloaded, reloaded_tokenizer = load_model("ftlib_outputs/07/adapter", max_seq_length=256,
                                          load_in_4bit=choice.load_in_4bit)
again = generate(reloaded, reloaded_tokenizer, questions, max_new_tokens=8)
print(again)

# %%
# NBVAL_CHECK_OUTPUT
print("the reloaded adapter gives identical answers:", again == generate(model, tokenizer, questions, max_new_tokens=8))

# %% [markdown]
# ## 5. Merged weights, vLLM and Ollama
#
# Serving tools want one model, not a base plus an adapter. `method="merged_16bit"` adds the adapters
# into the weights and saves a plain 16-bit model that `transformers`, vLLM and others load directly:
#
# ```bash
# vllm serve ftlib_outputs/07/merged        # an OpenAI-compatible server
# ```

# %%
# NBVAL_IGNORE_OUTPUT
saved = save(model, tokenizer, "ftlib_outputs/07/merged", method="merged_16bit", overwrite=True)

# %% [markdown]
# For Ollama, `method="ollama"` writes the weights plus a `Modelfile` carrying the chat template and the
# stop token; then `ollama create my-model -f Modelfile` inside that folder, and `ollama run my-model`.

# %%
# NBVAL_IGNORE_OUTPUT
from pathlib import Path

saved = save(model, tokenizer, "ftlib_outputs/07/ollama", method="ollama", overwrite=True)
print((Path("ftlib_outputs/07/ollama") / "Modelfile").read_text()[:600])

# %% [markdown]
# ## 6. Pushing to the Hugging Face Hub
#
# Pushing needs a token with write access. Never type it into a notebook cell (notebooks get shared, with
# their outputs): on Colab add it under Secrets as `HF_TOKEN`, elsewhere set the environment variable.
# The cell below pushes only when a token is there, and never prints it.

# %%
# NBVAL_IGNORE_OUTPUT
import os

token = os.environ.get("HF_TOKEN")
if token:
    save(model, tokenizer, "ftlib_outputs/07/hub", overwrite=True,
         repo_id="your-name/headline-adapter", token=token)  # repo_id pushes; a new repository starts private
    print("pushed to https://huggingface.co/your-name/headline-adapter")
else:
    print("No HF_TOKEN set: skipped the push (set it to push your adapter).")

# %% [markdown]
# ## Recap
#
# - `generate` answers one prompt or a batch; `print_tokens=True` shows the reply as it is written; `chat` keeps a conversation.
# - `save(..., method='lora')` writes a small adapter; `load_model(folder)` brings back identical answers.
# - `merged_16bit` gives one plain model for vLLM or transformers; `ollama` adds a Modelfile.
# - Keep the Hub token in a secret or environment variable, never in a cell.

# %% [markdown]
# ## Check yourself
#
# 1. Why does greedy decoding (`temperature=0`) give the same reply every time, and when would you sample instead?
# 2. When would you ship an adapter rather than merged weights?
# 3. What does the Modelfile have to carry so the model stops at the end of its reply?
# 4. Why is printing a token in a notebook risky even if you delete the cell later?

# %% [markdown]
# ---
#
# **Next: [08 · Done: what to try next](08_done_what_next.ipynb)**
