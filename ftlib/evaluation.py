"""Steps 4 and 6 of the guide, the checking half: does the model answer questions it has never seen?

- `evaluate` measures a held-out set: loss and perplexity (how surprised the model is by the right answers)
  and accuracy (does it generate them), with every example kept for you to read.
- `compare` puts two models (or two results) side by side on the same set: before and after fine-tuning.
- `diagnose` reads a training history and says whether the run over-fitted, under-fitted, diverged or
  looks healthy, from which step, and what to change.
"""

import math
import unicodedata
from dataclasses import dataclass, field

from ftlib.errors import FtlibError

# ---------------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------------


def normalize_answer(text):
    """Lower-case, drop punctuation and extra spaces: " Positive." and "positive" compare equal.

    Example:
        >>> normalize_answer("  The answer: POSITIVE! ")
        'the answer positive'
    """
    text = unicodedata.normalize("NFKC", str(text)).casefold()
    text = "".join(" " if unicodedata.category(character).startswith("P") else character for character in text)
    return " ".join(text.split())


def exact_match(predicted, expected):
    """The default scorer: True when the answers are equal after `normalize_answer`.

    Example:
        >>> exact_match("Positive.", "positive")
        True
    """
    return normalize_answer(predicted) == normalize_answer(expected)


@dataclass
class EvaluationResult:
    """What `evaluate` measured. Print it for a summary and the examples the model got wrong.

    loss: mean cross-entropy over the answer tokens (lower is better; about 0.5-1.0 after a healthy run)
    perplexity: exp(loss), "how many tokens the model hesitates between" (1.0 = always sure and right)
    accuracy: share of examples whose generated answer the scorer accepted (None when not measured)
    examples: one dict per example: prompt, expected, predicted, correct (plus score and loss)
    """

    loss: float | None
    perplexity: float | None
    accuracy: float | None
    examples: list = field(default_factory=list)
    scorer_name: str = "exact match"

    @property
    def wrong(self):
        """The examples the model got wrong (score below 1)."""
        return [example for example in self.examples if example.get("correct") is False]

    @property
    def correct_count(self):
        return sum(1 for example in self.examples if example.get("correct"))

    def summary(self):
        lines = [f"Evaluation on {len(self.examples)} held-out examples"]
        if self.loss is not None:
            lines.append(f"  loss        {self.loss:.4f}   (perplexity {self.perplexity:.2f}; lower is better)")
        if self.accuracy is not None:
            scored = sum(1 for example in self.examples if example.get("correct") is not None)
            lines.append(
                f"  accuracy    {self.accuracy:.3f}   ({self.correct_count} of {scored} correct, {self.scorer_name})"
            )
        return "\n".join(lines)

    def table(self, limit=10, only_wrong=False):
        """A text table of (up to `limit`) examples: the question part of the prompt, expected, predicted.

        Example:
            >>> print(result.table(limit=5, only_wrong=True))
        """
        rows = self.wrong if only_wrong else self.examples
        if not rows:
            return "(no examples)" if not only_wrong else "(none wrong)"
        questions = _distinct_parts([example["prompt"] for example in self.examples])
        index_of = {id(example): index for index, example in enumerate(self.examples)}
        lines = [f"{'#':>4}  {'prompt':<46} {'expected':<16} {'predicted':<16} ok"]
        for example in rows[:limit]:
            index = index_of[id(example)]
            mark = {True: "yes", False: "NO", None: "-"}[example.get("correct")]
            lines.append(
                f"{index + 1:>4}  {_clip(questions[index], 46):<46} {_clip(example['expected'], 16):<16} "
                f"{_clip(_shown(example.get('predicted')), 16):<16} {mark}"
            )
        if len(rows) > limit:
            lines.append(f"      ... {len(rows) - limit} more (result.examples has them all)")
        return "\n".join(lines)

    def __str__(self):
        text = self.summary()
        if self.accuracy is not None and self.wrong:
            text += "\n\nWrong answers:\n" + self.table(limit=5, only_wrong=True)
        return text

    def __repr__(self):
        return str(self)


def _clip(text, width):
    text = " ".join(str(text if text is not None else "").split())
    return text if len(text) <= width else text[:width - 3] + "..."


def _shown(predicted):
    if predicted is None:
        return "-"
    return predicted if predicted.strip() else "(nothing)"


def _distinct_parts(prompts):
    """Strip what every prompt shares (the chat template's header and the answer marker) for display."""
    if len(prompts) < 2:
        return list(prompts)
    start = len(_common_prefix(prompts))
    end = len(_common_prefix([prompt[start:][::-1] for prompt in prompts]))
    return [prompt[start:len(prompt) - end] or prompt for prompt in prompts]


def _common_prefix(texts):
    shortest = min(texts, key=len)
    for position, character in enumerate(shortest):
        if any(text[position] != character for text in texts):
            return shortest[:position]
    return shortest


def evaluate(
    model,
    tokenizer,
    dataset,
    max_new_tokens=None,  # None = just over the longest expected answer; raise it for long free-form answers
    scorer=None,  # None = normalised exact match; or a function (predicted, expected) -> bool or 0..1 score
    batch_size=8,  # examples per forward pass / generation batch: larger is faster, needs more memory
    max_examples=None,  # evaluate only the first N examples (None = all): quick checks on big test sets
    measure_loss=True,  # held-out loss and perplexity (one forward pass per batch: cheap)
    measure_accuracy=True,  # generate every answer and score it (slower: one token at a time)
    max_seq_length=None,  # for raw rows only: passed to format_dataset
):
    """Measure `model` on a held-out set: loss, perplexity and the accuracy of its generated answers.

    `dataset` is `format_dataset` output (its `prompt`, `completion`, `input_ids` and `labels` columns), a
    DatasetDict (its "test" split is used), or raw rows such as `{"question": ..., "answer": ...}`, which
    are formatted first with `format_dataset`. Generation is greedy, so results repeat exactly.

    Example:
        >>> result = evaluate(model, tokenizer, dataset["test"]); print(result)
    """
    if max_examples is not None and (isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1):
        raise FtlibError(f"max_examples must be a positive whole number or None, got {max_examples!r}: try 100")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise FtlibError(f"batch_size must be a positive whole number, got {batch_size!r}: try batch_size=8 (or 1 if memory is short)")
    if scorer is not None and not callable(scorer):
        raise FtlibError(
            f"scorer must be a function taking (predicted, expected) and returning True/False or a score "
            f"from 0 to 1, got {type(scorer).__name__}: e.g. scorer=lambda predicted, expected: expected in predicted"
        )

    rows = _as_formatted_rows(dataset, tokenizer, max_seq_length)[:max_examples]
    examples = [
        {"prompt": row["prompt"], "expected": row["completion"], "predicted": None, "correct": None}
        for row in rows
    ]
    was_training = model.training
    model.eval()
    try:
        loss = None
        if measure_loss:
            loss = _held_out_loss(model, tokenizer, rows, examples, batch_size)
        accuracy = None
        if measure_accuracy:
            accuracy = _accuracy(model, tokenizer, examples, scorer or exact_match, max_new_tokens, batch_size)
    finally:
        if was_training:
            model.train()
    perplexity = math.exp(min(loss, 700.0)) if loss is not None else None  # 700: exp overflows beyond ~709
    scorer_name = "exact match" if scorer is None else getattr(scorer, "__name__", "<lambda>")
    scorer_name = "custom scorer" if scorer_name == "<lambda>" else scorer_name
    return EvaluationResult(loss, perplexity, accuracy, examples, scorer_name=scorer_name)


def _as_formatted_rows(dataset, tokenizer, max_seq_length):
    from datasets import Dataset, DatasetDict

    if isinstance(dataset, DatasetDict):
        if "test" not in dataset:
            raise FtlibError(
                f"the DatasetDict has splits {list(dataset)} but no 'test': pass the held-out split itself, "
                "e.g. evaluate(model, tokenizer, dataset['validation'])"
            )
        dataset = dataset["test"]
    columns = set(dataset.column_names) if isinstance(dataset, Dataset) else None
    needed = {"prompt", "completion", "input_ids", "labels"}
    if columns is None or not needed <= columns:
        if isinstance(dataset, Dataset) and "input_ids" in columns and not {"prompt", "completion"} <= columns:
            raise FtlibError(
                "this dataset has token ids but no 'prompt'/'completion' columns, so the answers cannot be "
                "checked: pass format_dataset's output, or the raw rows (e.g. {'question', 'answer'}) to evaluate"
            )
        from ftlib.data import format_dataset

        settings = {"max_seq_length": max_seq_length} if max_seq_length else {}
        dataset = format_dataset(dataset, tokenizer, verbose=False, **settings)
        if isinstance(dataset, DatasetDict):
            dataset = dataset["test"]
    rows = [
        {name: row[name] for name in ("prompt", "completion", "input_ids", "labels")}
        for row in dataset
    ]
    if not rows:
        raise FtlibError("the evaluation set is empty: pass at least one example (hold out ~20% of your data)")
    return rows


def _held_out_loss(model, tokenizer, rows, examples, batch_size):
    """Mean cross-entropy over every answer token of the set (each token counts once, whatever the batch)."""
    import torch

    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total_loss, total_tokens = 0.0, 0
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        length = max(len(row["input_ids"]) for row in batch)
        input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), length), -100, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
        for index, row in enumerate(batch):  # right padding: positions stay as in training
            size = len(row["input_ids"])
            input_ids[index, :size] = torch.tensor(row["input_ids"])
            labels[index, :size] = torch.tensor(row["labels"])
            attention_mask[index, :size] = 1
        with torch.no_grad():
            logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
        # Token t predicts token t+1: drop the last logit and the first label.
        shifted_labels = labels[:, 1:].to(logits.device)
        for index in range(len(batch)):
            token_losses = torch.nn.functional.cross_entropy(
                logits[index, :-1].float(), shifted_labels[index], ignore_index=-100, reduction="sum"
            )
            count = int((shifted_labels[index] != -100).sum())
            example = examples[start + index]
            example["loss"] = float(token_losses) / count if count else None
            total_loss += float(token_losses)
            total_tokens += count
        del logits
    if total_tokens == 0:
        raise FtlibError(
            "no example in the evaluation set has answer tokens to score (every label is -100): "
            "check that format_dataset kept the answers (is max_seq_length cutting them off?)"
        )
    return total_loss / total_tokens


def _accuracy(model, tokenizer, examples, scorer, max_new_tokens, batch_size):
    scored = [example for example in examples if example["expected"].strip()]
    if not scored:
        return None  # raw text: nothing to answer, loss is the measure
    if max_new_tokens is None:
        longest = max(len(tokenizer(example["expected"], add_special_tokens=False)["input_ids"]) for example in scored)
        max_new_tokens = min(512, longest + 8)  # room for a few extra words before EOS; 512 caps runaway text
    elif isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise FtlibError(f"max_new_tokens must be a positive whole number or None, got {max_new_tokens!r}: try 32")

    from ftlib.generation import generate

    for start in range(0, len(scored), batch_size):
        batch = scored[start:start + batch_size]
        outputs = generate(
            model, tokenizer, [example["prompt"] for example in batch],
            max_new_tokens=max_new_tokens, use_chat_template=False,
        )
        for example, predicted in zip(batch, outputs):
            example["predicted"] = predicted.strip()
            score = scorer(example["predicted"], example["expected"])
            try:
                score = float(score)
            except (TypeError, ValueError) as error:
                raise FtlibError(
                    f"the scorer returned {score!r} for predicted={example['predicted']!r}: it must return "
                    "True/False or a number from 0 to 1"
                ) from error
            example["score"] = score
            example["correct"] = score >= 1.0
    return sum(example["score"] for example in scored) / len(scored)


# ---------------------------------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------------------------------


@dataclass
class Comparison:
    """Two evaluations of the same set, side by side. Print it for the table and the changed answers."""

    before: EvaluationResult
    after: EvaluationResult
    names: tuple = ("before", "after")

    @property
    def fixed(self):
        """Examples wrong in the first result and right in the second."""
        return [b for a, b in zip(self.before.examples, self.after.examples) if a.get("correct") is False and b.get("correct")]

    @property
    def broken(self):
        """Examples right in the first result and wrong in the second."""
        return [b for a, b in zip(self.before.examples, self.after.examples) if a.get("correct") and b.get("correct") is False]

    @property
    def accuracy_change(self):
        if self.before.accuracy is None or self.after.accuracy is None:
            return None
        return self.after.accuracy - self.before.accuracy

    @property
    def loss_change(self):
        if self.before.loss is None or self.after.loss is None:
            return None
        return self.after.loss - self.before.loss

    def __str__(self):
        first, second = self.names
        lines = [f"{'':<12}{first:>12}{second:>12}{'change':>12}"]
        for label, a, b, change in (
            ("loss", self.before.loss, self.after.loss, self.loss_change),
            ("perplexity", self.before.perplexity, self.after.perplexity, None),
            ("accuracy", self.before.accuracy, self.after.accuracy, self.accuracy_change),
        ):
            if a is None and b is None:
                continue
            cells = [f"{value:>12.3f}" if value is not None else f"{'-':>12}" for value in (a, b)]
            change_cell = f"{change:>+12.3f}" if change is not None else ""
            lines.append(f"{label:<12}{cells[0]}{cells[1]}{change_cell}")
        if self.before.accuracy is not None and self.after.accuracy is not None:
            lines.append(f"\n{len(self.fixed)} answers fixed, {len(self.broken)} broken (of {len(self.after.examples)}).")
        return "\n".join(lines)

    def __repr__(self):
        return str(self)


def compare(before, after=None, tokenizer=None, dataset=None, names=("before", "after"), **evaluate_settings):
    """Evaluate two models on the same set (or take two results) and show what changed.

    `before`/`after` are models or `EvaluationResult`s. Given a single LoRA model, "before" is the same
    model with its adapters switched off, i.e. the base model before fine-tuning.

    Example:
        >>> print(compare(model, tokenizer=tokenizer, dataset=test_rows))
    """
    if after is None:
        if not hasattr(before, "disable_adapter"):
            raise FtlibError(
                "compare needs two models or results, e.g. compare(base_model, tuned_model, tokenizer, dataset), "
                "or one LoRA model (its adapters are switched off for the 'before' side)"
            )
        _require(tokenizer, dataset)
        with before.disable_adapter():
            first = evaluate(before, tokenizer, dataset, **evaluate_settings)
        second = evaluate(before, tokenizer, dataset, **evaluate_settings)
        return Comparison(first, second, tuple(names))
    results = []
    for side in (before, after):
        if isinstance(side, EvaluationResult):
            results.append(side)
        else:
            _require(tokenizer, dataset)
            results.append(evaluate(side, tokenizer, dataset, **evaluate_settings))
    if len(results[0].examples) != len(results[1].examples):
        raise FtlibError(
            f"the two results cover different sets ({len(results[0].examples)} and {len(results[1].examples)} "
            "examples): evaluate both models on the same dataset"
        )
    return Comparison(results[0], results[1], tuple(names))


def _require(tokenizer, dataset):
    if tokenizer is None or dataset is None:
        raise FtlibError("to evaluate a model, compare needs tokenizer=... and dataset=... (the held-out set)")


# ---------------------------------------------------------------------------------------------------
# diagnose
# ---------------------------------------------------------------------------------------------------

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

    verdict: str  # "healthy" | "over-fitted" | "under-fitted" | "diverged"
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
    falling), else healthy. Thresholds are the constants at the top of this section.

    Example:
        >>> print(diagnose(history))
        Diagnosis: over-fitted (from step 30) ...
    """
    from ftlib.history import TrainingHistory

    if isinstance(history, dict):
        history = TrainingHistory.from_dict(history)
    if not isinstance(history, TrainingHistory):
        raise FtlibError(
            f"diagnose takes the history that train() returned, got {type(history).__name__}: "
            "history = train(model, tokenizer, dataset); diagnose(history)"
        )
    if not history.loss:
        raise FtlibError(
            "this history has no logged training loss to read: train with logging_steps=1 (the default) "
            "and pass the history that train() returned"
        )
    learning_rate = max(_finite(history.learning_rate), default=None)
    return (
        _diverged(history, learning_rate)
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
    pairs = list(zip(history.steps, history.loss)) + list(zip(history.eval_steps, history.eval_loss))
    bad_steps = [step for step, value in pairs if value is None or not math.isfinite(value)]
    if bad_steps or history.stopped_reason == "nan_loss":
        step = min(bad_steps) if bad_steps else (history.steps[-1] if history.steps else None)
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
    climbing = final > DIVERGE_RISE * lowest and final - lowest > DIVERGE_MIN_RISE
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
    step = history.steps[lowest_index]
    for index in range(lowest_index, len(smoothed)):
        if smoothed[index] > DIVERGE_RISE * lowest and smoothed[index] - lowest > DIVERGE_MIN_RISE:
            step = history.steps[index]
            break
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


def _over_fitted(history, learning_rate):
    remedies = [
        f"Lower the learning rate: try {_lower_rate(learning_rate, 2)}.",
        "Train for fewer steps or epochs (1-3 epochs is typical), or let early stopping pick the best "
        "point: train(..., early_stopping_patience=3) with a held-out set.",
        "Use a larger effective batch: raise gradient_accumulation_steps (e.g. 4 -> 8).",
        "Add more examples, or more varied ones, so there is less to memorise and more to generalise.",
        "Add dropout: add_lora(..., lora_dropout=0.05 to 0.1); or a smaller rank and alpha (e.g. r=8, lora_alpha=8).",
    ]
    eval_losses = [(step, value) for step, value in zip(history.eval_steps, history.eval_loss)]
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
    start, final = smoothed[0], smoothed[-1]
    start = max(history.loss[0], start)
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
