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
# # 04 · Model parameters
#
# **What you will learn**
#
# - the hyperparameters that matter: learning rate, epochs or steps, LoRA rank and alpha, dropout, batch size, gradient accumulation, sequence length
# - how to read training and held-out loss together while training runs
# - over-fitting and under-fitting, produced for real, and the guide's remedy for each
#
# Runs top to bottom in about four minutes on a laptop CPU with the tiny demo model; nothing needs a click.

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
# ## 1. The panel
#
# Each control is one hyperparameter with its usual range. Move them, then run the cells below again: the
# next cells read the panel's current values. Untouched (or run with "Run all"), the panel holds the
# starting values: the guide's defaults, with the learning rate and step count set for this model.

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib.notebook import HyperparameterPanel

panel = HyperparameterPanel(max_seq_length=256, **choice.recipe)
panel.show()

# %%
# NBVAL_CHECK_OUTPUT
print(panel.describe())

# %% [markdown]
# ## 2. Train with the panel's values
#
# The panel hands its values to `load_model`, `add_lora` and `train`. A held-out set (20% of the data)
# is evaluated about ten times during training, so the plot shows both curves.

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib import add_lora, evaluate, format_dataset, load_model, train
from ftlib.notebook import LiveLossPlot

model, tokenizer = load_model(choice.name, load_in_4bit=choice.load_in_4bit, **panel.load_kwargs())
model = add_lora(model, use_gradient_checkpointing=not choice.tiny, **panel.lora_kwargs())
data = format_dataset(train_rows, tokenizer, test_size=0.2, seed=3407)
history = train(model, tokenizer, data, output_dir="ftlib_outputs/04",
                callbacks=[LiveLossPlot("Your settings")], **panel.train_kwargs())

# %% [markdown]
# Score it on the held-out companies, and ask ftlib to read the curves:

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib import diagnose

test_set = format_dataset(test_rows, tokenizer)
print(f"held-out accuracy: {evaluate(model, tokenizer, test_set, max_new_tokens=4, measure_loss=False).accuracy:.2f}")
print(diagnose(history))

# %% [markdown]
# Both losses fall together and the held-out companies get the right label: a good fit.
# The next sections break this on purpose, in both directions.
#
# ## 3. Under-fitting: too small a learning rate
#
# With the learning rate a hundred times smaller the adapters barely move: the loss stays high and the
# model never learns to answer with a label. Under-fitting looks like a loss that hardly falls. (This run
# skips the held-out set, to save time: the training loss alone shows it.)

# %%
# NBVAL_IGNORE_OUTPUT
slow, _ = load_model(choice.name, load_in_4bit=choice.load_in_4bit, max_seq_length=256)
slow = add_lora(slow, r=16, use_gradient_checkpointing=not choice.tiny)
low_lr = dict(choice.recipe, learning_rate=choice.recipe["learning_rate"] / 100)
history_slow = train(slow, tokenizer, data["train"], output_dir="ftlib_outputs/04",
                     callbacks=[LiveLossPlot("Learning rate / 100")], **low_lr)
print(diagnose(history_slow))

# %% [markdown]
# The guide's remedy for under-fitting: a higher learning rate, more steps or epochs, or a larger rank.
# Here the remedy is to go back to the learning rate that worked; compare the two runs' final losses and
# accuracies:

# %%
# NBVAL_IGNORE_OUTPUT
slow_accuracy = evaluate(slow, tokenizer, test_set, max_new_tokens=4, measure_loss=False).accuracy
good_accuracy = evaluate(model, tokenizer, test_set, max_new_tokens=4, measure_loss=False).accuracy
print(f"{'learning rate':>14}{'final loss':>12}{'accuracy':>10}")
print(f"{low_lr['learning_rate']:>14.0e}{history_slow.final_loss:>12.2f}{slow_accuracy:>10.2f}")
print(f"{choice.recipe['learning_rate']:>14.0e}{history.final_loss:>12.2f}{good_accuracy:>10.2f}")

# %%
# NBVAL_CHECK_OUTPUT
print("the smaller learning rate ended with a higher training loss:", history_slow.final_loss > history.final_loss)

# %% [markdown]
# ## 4. Over-fitting: many epochs on a small set
#
# Over-fitting is the opposite: the model memorises its training examples instead of the pattern. Give it
# only 8 examples, a generous rank and 40 epochs, and watch the two curves part: the training loss
# heads for 0 while the held-out loss turns and rises.

# %%
# NBVAL_IGNORE_OUTPUT
small = format_dataset(train_rows[:8], tokenizer, verbose=False)
held_out = format_dataset(test_rows, tokenizer, verbose=False)
overfit, _ = load_model(choice.name, load_in_4bit=choice.load_in_4bit, max_seq_length=256)
overfit = add_lora(overfit, r=64, lora_alpha=64, use_gradient_checkpointing=not choice.tiny)
history_overfit = train(overfit, tokenizer, small, eval_dataset=held_out, num_train_epochs=40,
                        learning_rate=choice.recipe["learning_rate"], eval_steps=4,
                        output_dir="ftlib_outputs/04", callbacks=[LiveLossPlot("8 examples, 40 epochs")])
print(diagnose(history_overfit))

# %% [markdown]
# Read the numbers behind the curves: the lowest held-out loss came early, and training went on past it.

# %%
# NBVAL_IGNORE_OUTPUT
best = min(history_overfit.eval_loss)
print(f"final training loss {history_overfit.final_loss:.3f}")
print(f"held-out loss: lowest {best:.2f} at step {history_overfit.best_step}, final {history_overfit.eval_loss[-1]:.2f}")

# %%
# NBVAL_CHECK_OUTPUT
print("training loss near 0:", history_overfit.final_loss < 0.1)
print("held-out loss rose after its lowest point:", history_overfit.eval_loss[-1] > min(history_overfit.eval_loss))

# %% [markdown]
# The guide's remedies for over-fitting: more (or more varied) data, fewer epochs, a smaller learning
# rate, dropout or weight decay, and stopping at the lowest held-out loss. Here the most effective remedy
# is the first: the same rank and learning rate on all the training data, with a little dropout. Early stopping
# (`early_stopping_patience=2`) stops after two evaluations without improvement and keeps the best
# weights, so a long run costs nothing.

# %%
# NBVAL_IGNORE_OUTPUT
remedy, _ = load_model(choice.name, load_in_4bit=choice.load_in_4bit, max_seq_length=256)
remedy = add_lora(remedy, r=64, lora_alpha=64, lora_dropout=0.1, use_gradient_checkpointing=not choice.tiny)
history_remedy = train(remedy, tokenizer, data, learning_rate=choice.recipe["learning_rate"],
                       max_steps=choice.recipe["max_steps"], early_stopping_patience=2,
                       output_dir="ftlib_outputs/04_remedy", callbacks=[LiveLossPlot("All the data, early stopping")])
print(diagnose(history_remedy))
print(f"held-out accuracy: {evaluate(remedy, tokenizer, test_set, max_new_tokens=4, measure_loss=False).accuracy:.2f}")

# %% [markdown]
# With 819 examples instead of 8 the held-out loss follows the training loss down instead of parting
# from it.

# %% [markdown]
# ## Recap
#
# - The learning rate matters most: too low under-fits (the loss hardly falls), too high diverges.
# - Under-fitting: both losses stay high. Remedies: a higher learning rate, more steps, a larger rank.
# - Over-fitting: training loss near 0 while held-out loss rises. Remedies: more data, fewer epochs, dropout, weight decay, early stopping at the best held-out loss.
# - Rank r sets the adapters' capacity; alpha (at least r) scales their update; effective batch = batch × accumulation.

# %% [markdown]
# ## Check yourself
#
# 1. Training loss 0.02, held-out loss rising since step 40. What happened, and what do you change first?
# 2. Both losses are flat near their starting value after 60 steps. Name two things to try.
# 3. Why does early stopping need a held-out set?
# 4. Batch size 2 with accumulation 4, or batch size 8 with accumulation 1: what is the same, what differs?

# %% [markdown]
# ---
#
# **Next: [05 · Installing and requirements](05_installing_and_requirements.ipynb)**
