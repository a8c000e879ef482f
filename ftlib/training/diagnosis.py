"""Step 4 of the guide, read back from a run: did it over-fit, under-fit, diverge, or go well?

`diagnose(history)` reads the losses `train` logged and answers with a verdict, the step the problem
began, why, and what to change:

    >>> print(diagnose(history))
    Diagnosis: over-fitted (from step 30) ...
"""

import math
import numbers
from dataclasses import dataclass, field

from ftlib.errors import FtlibError
from ftlib.training.history import TrainingHistory

# Thresholds, in loss units (cross-entropy on the answer tokens). The guide: a healthy run settles near
# 0.5-1.0 and does not reach 0.
HEALTHY_LOW, HEALTHY_HIGH = 0.5, 1.0  # the guide's healthy range, shown in explanations
MEMORISED_LOSS = 0.05  # training loss this close to 0 = the answers are memorised (judged without held-out data)
UNDERFIT_LOSS = 1.5  # ending above this = the task is not learned yet (well above the healthy range)
UNDERFIT_MIN_IMPROVEMENT = 0.10  # the loss fell by less than 10% of where it started = stalled
OVERFIT_EVAL_RISE = 0.10  # held-out loss 10% above its best while training loss keeps falling = over-fitting
OVERFIT_MIN_RISE = 0.02  # ... and by at least this much, so noise on a tiny held-out loss does not count
DIVERGE_RISE = 1.5  # smoothed training loss 1.5x its lowest point and...
DIVERGE_MIN_RISE = 0.5  # ... at least 0.5 above it = the loss is climbing, not settling
DIVERGE_SPIKE = 1.5  # any logged loss 1.5x above the first one = updates overshoot (a healthy run never goes back above its start)
USUAL_LORA_RATE = 2e-4  # the guide's default; under-fitted runs below it are told to try it
SMOOTHING_FRACTION = 0.1  # average the last 10% of logged losses (at least 3) to see through batch noise
SMOOTHING_MIN_POINTS = 3


@dataclass
class Diagnosis:
    """What `diagnose` concluded: verdict, the step it began, why, and what to change."""

    verdict: str  # "healthy" | "over-fitted" | "under-fitted" | "diverged" | "drifted" (preference runs)
    # | "no reward" | "no learning signal" | "cut off" (GRPO runs: ftlib/training/reward_diagnosis.py)
    step: int | None  # the step where the problem began (None when healthy)
    explanation: str
    remedies: list = field(default_factory=list)
    where: str = ""  # how the step reads in the headline; "" = "from step N"

    @property
    def healthy(self):
        return self.verdict == "healthy"

    def __str__(self):
        where = ""
        if self.step is not None and not self.healthy:
            where = f" ({self.where or 'from step'} {self.step})"
        lines = [f"Diagnosis: {self.verdict}{where}", self.explanation]
        if self.remedies:
            lines.append("What to try:" if not self.healthy else "Next:")
            lines.extend(f"  - {remedy}" for remedy in self.remedies)
        return "\n".join(lines)

    def __repr__(self):
        return str(self)


def _finite(values):
    return [value for value in values if value is not None and math.isfinite(value)]


def _smooth(values):
    """Moving average over a window of ~10% of the run, so one noisy batch does not decide the verdict."""
    window = max(SMOOTHING_MIN_POINTS, int(len(values) * SMOOTHING_FRACTION))
    smoothed = []
    for index in range(len(values)):
        part = values[max(0, index - window + 1):index + 1]
        smoothed.append(sum(part) / len(part))
    return smoothed


def diagnose(history):
    """Read a training history and say whether the run over-fitted, under-fitted, diverged or is healthy.

    Checks, in order: diverged (a NaN/inf loss, or a training loss climbing well above its lowest point),
    over-fitted (held-out loss rising from its best while training loss keeps falling; without held-out
    data, a training loss near 0), under-fitted (loss ending well above the healthy 0.5-1.0 range, or barely
    falling), else healthy. Thresholds are the constants at the top of this module. A GRPO history (one that
    logged "reward") is read by its rewards instead: no reward, no learning signal, cut off, NaN in float16
    (ftlib/training/reward_diagnosis.py).

    Example:
        >>> print(diagnose(history))
        Diagnosis: over-fitted (from step 30) ...
    """
    if isinstance(history, dict):
        history = TrainingHistory.from_dict(history)
    if not isinstance(history, TrainingHistory):
        raise FtlibError(
            f"diagnose takes the history that train() returned, got {type(history).__name__}: "
            "history = train(model, tokenizer, dataset); diagnose(history)"
        )
    for name in ("steps", "loss", "learning_rate", "eval_steps", "eval_loss"):
        values = getattr(history, name)
        if not isinstance(values, (list, tuple)) or not all(
                value is None or (isinstance(value, numbers.Real) and not isinstance(value, bool)) for value in values):
            raise FtlibError(
                f"history.{name} must be a list of numbers, got {values!r:.80}: pass the history that train() "
                "returned (or TrainingHistory.from_dict of its to_dict())"
            )
    if not history.loss:
        raise FtlibError(
            "this history has no logged training loss to read: train with logging_steps=1 (the default) "
            "and pass the history that train() returned"
        )
    from ftlib.training.reward_diagnosis import diagnose_rewards, is_reward_history

    if is_reward_history(history):  # GRPO: its loss stays near 0 either way, so the rewards are read instead
        return diagnose_rewards(history)
    learning_rate = max(_finite(history.learning_rate), default=None)
    return (
        _diverged(history, learning_rate)
        or _preference_problem(history)
        or _over_fitted(history, learning_rate)
        or _under_fitted(history, learning_rate)
        or _healthy(history)
    )


def _lower_rate(learning_rate, factor):
    if learning_rate:
        return f"learning_rate={learning_rate / factor:.2g} (you used {learning_rate:.2g})"
    return f"a learning rate {factor}x lower"


def _diverged(history, learning_rate):
    remedies = [
        f"Lower the learning rate: try {_lower_rate(learning_rate, 10)}.",
        "Keep a few warm-up steps (warmup_steps=5-10) so the first updates are small.",
        "On a GPU without bf16 (e.g. a T4), fp16 can overflow: a lower learning rate usually fixes it.",
        "Check the data for broken examples (empty answers, every label masked).",
    ]
    bad_steps = _non_finite_steps(history.steps, history.loss) + _non_finite_steps(history.eval_steps, history.eval_loss)
    if bad_steps or history.stopped_reason == "nan_loss":
        step = min(bad_steps) if bad_steps else (history.steps[-1] if history.steps else None)
        if not _finite(history.loss):  # never a finite loss: broken before the first update
            return Diagnosis(
                "diverged", step,
                f"The loss was NaN or infinite from the first logged step (step {step}), before any update could "
                "have made it so: the model's weights held NaN or infinite values, or the data has examples "
                "with nothing to learn.",
                ["Load the model again with load_model (and add_lora): ftlib.checks.non_finite_weights(model) "
                 "names weights that hold NaN or inf.",
                 "Check the data for broken examples (empty answers, every label masked): "
                 "ftlib.data.show_example(dataset, tokenizer).",
                 f"Then train again; if the loss turns NaN later in the run, try {_lower_rate(learning_rate, 10)}."],
            )
        return Diagnosis(
            "diverged", step,
            f"The loss became NaN or infinite at step {step}: the updates grew so large that the numbers "
            "overflowed, and nothing after that point can be learned.",
            remedies,
        )
    smoothed = _smooth(history.loss)
    lowest = min(smoothed)
    final = smoothed[-1]
    first = history.loss[0]
    climbing = _climbed(final, lowest)
    spikes = [(step, value) for step, value in zip(history.steps[1:], history.loss[1:]) if value > DIVERGE_SPIKE * first]
    if spikes and not climbing:
        step, value = spikes[0]
        highest = max(history.loss)
        peak = f" (and up to {highest:.2f} later)" if highest > value else ""
        return Diagnosis(
            "diverged", step,
            f"The training loss jumped from {first:.2f} at the start to {value:.2f} at step {step}{peak}: the "
            f"updates overshoot, so the run is unstable even where the loss comes back down (it ended near {final:.2f}).",
            remedies,
        )
    if not climbing:
        return None
    lowest_index = smoothed.index(lowest)
    # The final value climbed, so some point from the lowest one on is the first that did.
    step = next(step for step, value in zip(history.steps[lowest_index:], smoothed[lowest_index:])
                if _climbed(value, lowest))
    if lowest_index == 0:
        path = f"never fell below where it started ({first:.2f}) and climbed to {final:.2f}"
    else:
        above_start = " - above where it started -" if final > first else ""
        path = f"fell to {lowest:.2f}, then climbed back to {final:.2f}{above_start}"
    return Diagnosis(
        "diverged", step,
        f"The training loss {path} from about step {step}: the learning rate is too high, so each update "
        "overshoots and undoes what was learned.",
        remedies,
    )


def _non_finite_steps(steps, values):
    """The steps whose logged value is NaN, infinite or missing (a value without its step counts by position)."""
    return [steps[index] if index < len(steps) else index + 1 for index, value in enumerate(values)
            if value is None or not math.isfinite(value)]


def _climbed(value, lowest):
    return value > DIVERGE_RISE * lowest and value - lowest > DIVERGE_MIN_RISE


def _over_fitted(history, learning_rate):
    remedies = [
        f"Lower the learning rate: try {_lower_rate(learning_rate, 2)}.",
        "Train for fewer steps or epochs (1-3 epochs is typical), or let early stopping pick the best "
        "point: train(..., early_stopping_patience=3) with a held-out set.",
        "Use a larger effective batch: raise gradient_accumulation_steps (e.g. 4 -> 8).",
        "Add more examples, or more varied ones, so there is less to memorise and more to generalise.",
        "Add dropout: add_lora(..., lora_dropout=0.05 to 0.1); or a smaller rank and alpha (e.g. r=8, lora_alpha=8).",
    ]
    eval_losses = list(zip(history.eval_steps, history.eval_loss))
    if len(eval_losses) >= 3:
        best_step, best = min(eval_losses, key=lambda pair: pair[1])
        last_step, last = eval_losses[-1]
        rose = last > best * (1 + OVERFIT_EVAL_RISE) and last - best > OVERFIT_MIN_RISE
        training_at_best = _training_loss_near(history, best_step)
        training_fell = history.loss[-1] < training_at_best if training_at_best is not None else True
        if rose and training_fell and best_step != last_step:
            return Diagnosis(
                "over-fitted", best_step,
                f"The held-out loss was lowest ({best:.3f}) at step {best_step} and has risen to {last:.3f} since, "
                f"while the training loss kept falling (to {_smooth(history.loss)[-1]:.3f}): the model is "
                "memorising the training examples instead of learning what carries over to new ones. "
                f"The model from step {best_step} was the best one.",
                remedies,
            )
        return None
    smoothed = _smooth(history.loss)
    if smoothed[-1] < MEMORISED_LOSS:
        step = next(s for s, value in zip(history.steps, smoothed) if value < MEMORISED_LOSS)
        return Diagnosis(
            "over-fitted", step,
            f"The training loss fell to {smoothed[-1]:.3f}, close to 0, from step {step}: the model very likely "
            "memorised the training answers (the guide: a healthy loss settles near 0.5-1.0 and never reaches 0). "
            "Hold out ~20% of the data (eval_dataset=..., or format_dataset(..., test_size=0.2)) to confirm.",
            remedies,
        )
    return None


def _training_loss_near(history, step):
    before = [value for logged, value in zip(history.steps, _smooth(history.loss)) if logged <= step]
    return before[-1] if before else None


def _under_fitted(history, learning_rate):
    smoothed = _smooth(history.loss)
    start, final = history.loss[0], smoothed[-1]  # the smoothed curve starts at the first loss itself
    improvement = (start - final) / start if start > 0 else 0.0
    high = final > UNDERFIT_LOSS
    stalled = improvement < UNDERFIT_MIN_IMPROVEMENT and final > HEALTHY_HIGH
    if not (high or stalled):
        return None
    # The plateau began where the smoothed loss first came within 5% of where it ended.
    plateau_index = next(index for index, value in enumerate(smoothed) if value <= final * 1.05)
    still_falling = plateau_index >= len(smoothed) - max(2, len(smoothed) // 10)
    step = history.steps[-1] if still_falling else history.steps[plateau_index]
    if learning_rate and learning_rate < USUAL_LORA_RATE:
        raise_rate = f"learning_rate={USUAL_LORA_RATE:g} (you used {learning_rate:.2g})"
    elif learning_rate:
        raise_rate = f"learning_rate={learning_rate * 2:.2g} (you used {learning_rate:.2g})"
    else:
        raise_rate = f"learning_rate={USUAL_LORA_RATE:g}"
    remedies = [
        f"Raise the learning rate: try {raise_rate}; {USUAL_LORA_RATE:g} is the usual LoRA starting point.",
        "Train longer: more max_steps, or num_train_epochs=1-3.",
        "Give the adapters more capacity: a higher rank and alpha (e.g. add_lora(..., r=32, lora_alpha=32)).",
        "Check the data: are the answers consistent, and does format_dataset's output end each answer with EOS?",
    ]
    if still_falling:
        how = f"was still falling when training ended ({start:.2f} -> {final:.2f}): it needs more steps or a higher learning rate"
    else:
        how = f"stalled at about {final:.2f} from step {step} (it started at {start:.2f})"
    return Diagnosis(
        "under-fitted", step,
        f"The training loss {how}; a model that has learned the task settles near {HEALTHY_LOW}-{HEALTHY_HIGH} "
        "or below on the answer tokens.",
        remedies,
        where="still learning at step" if still_falling else "",
    )


MARGIN_MIN_GROWTH = 0.05  # a DPO/ORPO/KTO reward margin that grew less than this (beta-scaled log-probability)
# from the first fifth of the run to the last has not learned the preference


def _preference_problem(history):
    """For preference runs (a logged rewards/margins): a margin that never grew, or both rewards falling.

    Both rewards falling means the model lowers the chosen answer's probability too, and wins its margin
    by pushing the rejected one down faster: it drifts from the reference instead of learning the preference.
    """
    steps, margins = history.metric("rewards/margins")
    if len(margins) < 5:
        return None
    fifth = max(1, len(margins) // 5)
    start, end = sum(margins[:fifth]) / fifth, sum(margins[-fifth:]) / fifth
    learning_rate = max(_finite(history.learning_rate), default=None)
    if end - start < MARGIN_MIN_GROWTH:
        return Diagnosis("under-fitted", steps[-1], (
            f"The reward margin (how much more the model prefers chosen over rejected than its reference does) went "
            f"from {start:.3f} to {end:.3f}: it never grew, so the preference was not learned."), [
            "A higher learning_rate (LoRA takes 10-100x a full fine-tune's) or more max_steps.",
            "Check the pairs: chosen and rejected should differ in what you want preferred, not only in wording.",
        ], where="by step")
    _, chosen = history.metric("rewards/chosen")
    _, rejected = history.metric("rewards/rejected")
    if len(chosen) >= fifth and len(rejected) >= fifth:
        chosen_end, rejected_end = sum(chosen[-fifth:]) / fifth, sum(rejected[-fifth:]) / fifth
        if chosen_end < 0 and rejected_end < 0 and -chosen_end > end:
            return Diagnosis("drifted", steps[-1], (
                f"Both rewards fell (chosen {chosen_end:.2f}, rejected {rejected_end:.2f}): the model makes the chosen "
                f"answers less likely too, and its margin ({end:.2f}) comes from pushing the rejected ones down faster. "
                "It is moving away from its reference rather than learning the preference."), [
                f"Try {_lower_rate(learning_rate, 3)}, or a higher beta "
                "(it keeps the model closer to its reference).",
                "Or method='orpo', whose supervised term keeps the chosen answers likely.",
            ], where="by step")
    return None


def _healthy(history):
    final = _smooth(history.loss)[-1]
    if history.eval_loss:
        best = min(history.eval_loss)
        held_out = f"ended at {history.eval_loss[-1]:.3f} (best {best:.3f}) and is not rising"
        if final < MEMORISED_LOSS:
            explanation = (
                f"The training loss went close to 0 ({final:.3f}), but the held-out loss went down with it: it {held_out}. "
                "So the model learned the task rather than memorising its examples (short answers, like a one-word "
                "label, can be predicted this surely)."
            )
        else:
            explanation = f"The training loss settled at {final:.3f} without climbing or collapsing to 0. The held-out loss {held_out}."
    else:
        explanation = (
            f"The training loss settled at {final:.3f} without climbing or collapsing to 0 (the guide's healthy "
            f"range is about {HEALTHY_LOW}-{HEALTHY_HIGH}). Without held-out data over-fitting cannot be ruled out: "
            "pass eval_dataset=... next time."
        )
    return Diagnosis(
        "healthy", None,
        explanation,
        [
            "Check the answers themselves: evaluate(model, tokenizer, test_set) for accuracy on unseen examples.",
            "Save it: save(model, tokenizer, 'my-model').",
        ],
    )
