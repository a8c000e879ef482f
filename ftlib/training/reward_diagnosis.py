"""`diagnose` for GRPO runs: read the rewards, not the loss.

A GRPO loss sits near 0 whether the run learns or not, so a history that logged "reward" is judged by what
GRPO logs instead (their TRL names): "reward" (mean total reward), "frac_reward_zero_std" (the share of groups
whose completions all scored the same), "completions/clipped_ratio" (the share cut off at
max_completion_length). The stuck cases, in the order they are checked:

    diverged           the loss or the reward turned NaN: in float16 (a T4), the gradients overflowed
    no reward          the reward was 0 at every step: nothing the model wrote earned anything
    no learning signal nearly every group scored all its completions the same: nothing to compare
    cut off            most completions hit max_completion_length before their answer
    under-fitted       the reward did not rise
"""

import math

from ftlib.training.diagnosis import Diagnosis, _finite, _lower_rate

FLAT_REWARD = 1e-6  # a reward within this of 0 at every step is "flat at 0"
NO_SIGNAL_SHARE = 0.9  # groups with all-equal rewards, averaged over the run, at or above this = no signal
CUT_OFF_SHARE = 0.5  # completions cut at the length limit, over the last fifth of the run, at or above this
MIN_REWARD_RISE = 0.05  # mean reward of the last fifth minus the first fifth below this = not learning


def is_reward_history(history):
    """True when the history comes from a GRPO run (it logged "reward")."""
    return bool(history.metric("reward")[1])


def diagnose_rewards(history):
    """The Diagnosis of a GRPO history: a stuck case in words with what to change, or healthy."""
    learning_rate = max(_finite(history.learning_rate), default=None)
    steps, rewards = history.metric("reward")
    return (_not_finite(history, steps, rewards, learning_rate) or _no_reward(history, steps, rewards)
            or _no_signal(history) or _cut_off(history) or _not_rising(steps, rewards, learning_rate)
            or _healthy(steps, rewards))


def _fifths(values):
    fifth = max(1, len(values) // 5)
    return sum(values[:fifth]) / fifth, sum(values[-fifth:]) / fifth


def _mean(values):
    return sum(values) / len(values) if values else 0.0


def _not_finite(history, steps, rewards, learning_rate):
    bad = [step for step, value in zip(history.steps, history.loss) if value is None or not math.isfinite(value)]
    bad += [step for step, value in zip(steps, rewards) if not math.isfinite(value)]
    if not bad and history.stopped_reason != "nan_loss":
        return None
    step = min(bad) if bad else (history.steps[-1] if history.steps else None)
    return Diagnosis(
        "diverged", step,
        f"The loss or the reward became NaN at step {step}: the gradients overflowed. On a GPU without bf16 (a T4) "
        "training runs in float16, whose largest number is 65,504; the log-probability ratios of GRPO and a high "
        "learning rate exceed it first. ftlib stopped the run and put back the last good weights.",
        [f"Lower the learning rate: try {_lower_rate(learning_rate, 10)}.",
         "Keep warmup_steps=5-10, so the first updates are small.",
         "On a GPU with bf16 (A100, L4, H100) load_model(..., dtype='bfloat16') cannot overflow this way.",
         "Check that no reward function returns NaN or an infinite score."],
    )


def _no_reward(history, steps, rewards):
    if any(abs(value) > FLAT_REWARD for value in rewards):
        return None
    _, clipped = history.metric("completions/clipped_ratio")
    cut = (f" Most completions ({_mean(clipped):.0%}) also hit max_completion_length, so they never reached an answer."
           if clipped and _mean(clipped) >= CUT_OFF_SHARE else "")
    return Diagnosis(
        "no reward", steps[0],
        f"The reward was 0 at every step from step {steps[0]}: no completion earned anything, so every group scored "
        f"the same and GRPO had nothing to learn from (a loss near 0 here means nothing happened).{cut}",
        [("Warm up with a short SFT run on a few worked answers in the expected format (train(..., method='sft')), "
         "so that some completions earn a reward."),
         "Add a partial-credit reward: format_reward pays for the tags alone, close_answer_reward for a near number.",
         "Make the task easier (smaller numbers, fewer steps of reasoning) until some completions are right.",
         "Check each reward function on hand-written completions: does a right answer really score above 0?",
         "If the completions read as noise, sample closer to the greedy answer: temperature=0.7."],
        where="at every step from",
    )


def _no_signal(history):
    steps, shares = history.metric("frac_reward_zero_std")
    if not shares or _mean(shares) < NO_SIGNAL_SHARE:
        return None
    return Diagnosis(
        "no learning signal", steps[0],
        f"In {_mean(shares):.0%} of the groups every completion scored the same. GRPO learns from the differences "
        "within a group (a completion is pushed up by how far it beats its group's mean), so a group that is all "
        "right or all wrong teaches nothing.",
        ["Make the task easier, so that some completions of a group are right and others wrong.",
         "Add a partial-credit reward (format_reward, close_answer_reward) so nearer misses score higher.",
         "Warm up with a short SFT run on the format first (train(..., method='sft')).",
         "Sample more completions per prompt (num_generations=8-16) or a higher temperature, for more variety."],
        where="throughout, from step",
    )


def _cut_off(history):
    steps, clipped = history.metric("completions/clipped_ratio")
    if not clipped:
        return None
    _, late = _fifths(clipped)
    if late < CUT_OFF_SHARE:
        return None
    _, lengths = history.metric("completions/max_length")
    limit = f" ({int(max(lengths))} tokens)" if lengths else ""
    return Diagnosis(
        "cut off", steps[-1],
        f"{late:.0%} of the completions at the end of the run hit max_completion_length{limit} and were cut off, "
        "most of them before their answer: they earn nothing, and the reward cannot tell a long right answer from "
        "a wrong one.",
        ["Raise max_completion_length (e.g. double it) if the answers need that much reasoning.",
         "Add length_guard(max_words=...) from ftlib.training.rewards, so shorter complete answers score higher.",
         "Ask for brief reasoning in the prompt, or warm up with SFT on short worked answers."],
        where="by step",
    )


def _not_rising(steps, rewards, learning_rate):
    if len(rewards) < 5:
        return None
    start, end = _fifths(rewards)
    if end - start >= MIN_REWARD_RISE:
        return None
    return Diagnosis(
        "under-fitted", steps[-1],
        f"The mean reward went from {start:.3f} to {end:.3f} (first and last fifth of the run): it did not rise, "
        "although the groups did differ.",
        [(f"Raise the learning rate: try {_lower_rate(learning_rate, 0.5) if learning_rate else 'a higher one'}; "
         "LoRA takes higher rates than a full fine-tune."),
         "Train longer (more max_steps): GRPO's reward often rises slowly at first.",
         "Check that the reward functions reward what you want: print a few completions and their scores."],
        where="by step",
    )


def _healthy(steps, rewards):
    start, end = _fifths(rewards)
    return Diagnosis(
        "healthy", None,
        f"The mean reward rose from {start:.3f} to {end:.3f} (first and last fifth of the run), the groups differed "
        "enough to learn from, and few completions hit the length limit.",
        ["Measure it on held-out prompts: evaluate_rewards(model, tokenizer, test_rows, reward_functions).",
         "Save it: save(model, tokenizer, 'my-model')."],
    )
