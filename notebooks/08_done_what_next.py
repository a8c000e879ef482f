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
# # 08 · Done: what to try next
#
# **What you will learn**
#
# - the whole path in six calls
# - where to go next: preference tuning, reasoning with reinforcement learning, continued pretraining, vision
#
# Runs top to bottom in about a minute on a laptop CPU with the tiny demo model; nothing needs a click.

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
# ## 1. The whole path, once more
#
# Everything from notebooks 01 to 07 in one place: load, add adapters, format, train, try, save.

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib import add_lora, format_dataset, generate, load_model, save, train
from ftlib.demo import load_headlines

model, tokenizer = load_model(choice.name, max_seq_length=256, load_in_4bit=choice.load_in_4bit)
model = add_lora(model, r=16, lora_alpha=16, use_gradient_checkpointing=not choice.tiny)
data = format_dataset(load_headlines("train"), tokenizer, test_size=0.2, seed=3407)
history = train(model, tokenizer, data, output_dir="ftlib_outputs/08", **choice.recipe)
print(generate(model, tokenizer, load_headlines("test")[0]["question"], max_new_tokens=8))
saved = save(model, tokenizer, "ftlib_outputs/08/adapter", overwrite=True)

# %% [markdown]
# And how that run went, in the guide's terms:

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib import diagnose

print(diagnose(history))

# %% [markdown]
# ## 2. What to try next
#
# - **Your own data.** Replace `load_headlines` with your rows (notebook 03 shows the shapes), hold out
#   20%, and start from the guide's defaults.
# - **A larger model.** Set `FTLIB_MODEL` (for example `Qwen/Qwen2.5-1.5B-Instruct` or
#   `meta-llama/Llama-3.2-3B-Instruct`) and rerun these notebooks on a GPU; notebook 05 tells you what fits.
# - **Preference tuning (DPO, ORPO, KTO).** Instead of one right answer per prompt, show a *chosen* and a
#   *rejected* answer and train the model to prefer the first. TRL's `DPOTrainer`, `ORPOTrainer` and
#   `KTOTrainer` take such pairs, and a LoRA model from `add_lora` trains with them as it is.
# - **Reasoning with GRPO.** Reinforcement learning from a reward you compute (is the maths answer right?
#   does the code pass its tests?): the model samples several answers and learns from their scores. TRL's
#   `GRPOTrainer`.
# - **Continued pretraining.** Raw text of your domain (notebook 03, section 5) teaches vocabulary and style
#   before an instruction fine-tune.
# - **Vision.** Vision-language models fine-tune the same way, on image and text pairs.
#
# A preference pair looks like this; the prompt is shared, the answers compete:

# %%
# NBVAL_CHECK_OUTPUT
pair = {"prompt": "Does this headline impact Velex positively or negatively?\nVelex shares jump.",
        "chosen": "positive", "rejected": "The headline talks about shares."}
for key, value in pair.items():
    print(f"{key:>9}: {value}")

# %% [markdown]
# ## Recap
#
# - load_model → add_lora → format_dataset → train → generate → save: the whole of supervised fine-tuning.
# - Check the environment first, hold out data, read both losses, evaluate on what you care about.
# - Next steps build on the same model: preference tuning (DPO, ORPO, KTO), GRPO, continued pretraining, vision.

# %% [markdown]
# ## Check yourself
#
# 1. Which of the six calls would you change first to fine-tune on your own data?
# 2. What does preference tuning learn that supervised fine-tuning cannot?
# 3. When would continued pretraining come before instruction fine-tuning?

# %% [markdown]
# ---
#
# **Back to the start: [01 · Understand fine-tuning](01_understand_fine_tuning.ipynb) — or open the README for the command-line tools.**
