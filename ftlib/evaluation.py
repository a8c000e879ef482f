"""Steps 4 and 6 of the guide, the checking half: does the model answer questions it has never seen?

- `evaluate` measures a held-out set: loss and perplexity (how surprised the model is by the right answers)
  and accuracy (does it generate them), with every example kept for you to read.
- `compare` puts two models (or two results) side by side on the same set: before and after fine-tuning.

`diagnose`, which reads a training history, lives with training (ftlib.training.diagnosis).
"""

import math
import os
import unicodedata
from dataclasses import dataclass, field

from ftlib.checks import check_flag, check_positive, check_tokenizer, non_finite_weights
from ftlib.data.formatting import ensure_formatted, is_formatted
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
    start = len(os.path.commonprefix(prompts))
    end = len(os.path.commonprefix([prompt[start:][::-1] for prompt in prompts]))
    return [prompt[start:len(prompt) - end] or prompt for prompt in prompts]


def evaluate(
    model,
    tokenizer,
    dataset,
    *,
    max_new_tokens=None,  # None = just over the longest expected answer; raise it for long free-form answers
    scorer=None,  # None = normalised exact match; or a function (predicted, expected) -> bool or 0..1 score
    batch_size=8,  # examples per forward pass / generation batch: larger is faster, needs more memory
    max_examples=None,  # evaluate only the first N examples (None = all): quick checks on big test sets
    measure_loss=True,  # held-out loss and perplexity (one forward pass per batch: cheap)
    measure_accuracy=True,  # generate every answer and score it (slower: one token at a time)
    max_seq_length=None,  # raw rows only: passed to format_dataset (formatted data keeps its own length)
):
    """Measure `model` on a held-out set: loss, perplexity and the accuracy of its generated answers.

    `dataset` is `format_dataset` output (its `prompt`, `completion`, `input_ids` and `labels` columns), a
    DatasetDict (its "test" split is used), or raw rows such as `{"question": ..., "answer": ...}`, which
    are formatted first with `format_dataset`. Generation is greedy, so results repeat exactly.

    Example:
        >>> result = evaluate(model, tokenizer, dataset["test"]); print(result)
    """
    check_positive("max_examples", max_examples, "100", allow_none=True)
    check_positive("batch_size", batch_size, "batch_size=8 (or 1 if memory is short)")
    if scorer is not None and not callable(scorer):
        raise FtlibError(
            f"scorer must be a function taking (predicted, expected) and returning True/False or a score "
            f"from 0 to 1, got {type(scorer).__name__}: e.g. scorer=lambda predicted, expected: expected in predicted"
        )
    check_flag("measure_loss", measure_loss)
    check_flag("measure_accuracy", measure_accuracy)
    check_tokenizer(tokenizer, "evaluate")
    if not hasattr(model, "named_parameters") or not callable(getattr(model, "generate", None)):
        raise FtlibError(f"evaluate needs the model that load_model returned, got {type(model).__name__}: "
                         "evaluate(model, tokenizer, test_rows)")
    if not (measure_loss or measure_accuracy):
        raise FtlibError("measure_loss=False and measure_accuracy=False leave nothing to measure: keep one of them")
    if not measure_accuracy:
        unused = [name for name, value in (("max_new_tokens", max_new_tokens), ("scorer", scorer)) if value is not None]
        if unused:
            raise FtlibError(
                f"{' and '.join(unused)} set how answers are generated and scored, but measure_accuracy=False "
                f"generates none: leave {' and '.join(unused)} out, or drop measure_accuracy=False"
            )

    rows = _as_formatted_rows(dataset, tokenizer, max_seq_length)[:max_examples]
    if non_finite_weights(model, remember=True):
        from ftlib.generation import non_finite_output_error

        raise non_finite_output_error(model, "evaluate")
    examples = [
        {"prompt": row["prompt"], "expected": row["completion"], "predicted": None, "correct": None}
        for row in rows
    ]
    was_training = model.training
    model.eval()
    try:
        loss = _held_out_loss(model, tokenizer, rows, examples, batch_size) if measure_loss else None
        accuracy = (_accuracy(model, tokenizer, examples, scorer or exact_match, max_new_tokens, batch_size)
                    if measure_accuracy else None)
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
    if isinstance(dataset, Dataset) and "input_ids" in dataset.column_names \
            and not {"prompt", "completion"} <= set(dataset.column_names):
        raise FtlibError(
            "this dataset has token ids but no 'prompt'/'completion' columns, so the answers cannot be "
            "checked: pass format_dataset's output, or the raw rows (e.g. {'question', 'answer'}) to evaluate"
        )
    needed = ("prompt", "completion", "input_ids", "labels")
    if max_seq_length is not None and is_formatted(dataset, needed):
        raise FtlibError(
            f"max_seq_length={max_seq_length} applies when evaluate formats raw rows, but this dataset is already "
            "formatted: leave max_seq_length out, or format again with format_dataset(rows, tokenizer, "
            f"max_seq_length={max_seq_length})"
        )
    dataset = ensure_formatted(dataset, tokenizer, max_seq_length=max_seq_length, needed=needed)
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
    if not math.isfinite(total_loss):
        from ftlib.generation import non_finite_output_error

        raise non_finite_output_error(model, "evaluate")
    return total_loss / total_tokens


def _accuracy(model, tokenizer, examples, scorer, max_new_tokens, batch_size):
    scored = [example for example in examples if example["expected"].strip()]
    if not scored:
        return None  # raw text: nothing to answer, loss is the measure
    check_positive("max_new_tokens", max_new_tokens, "32", allow_none=True)
    if max_new_tokens is None:
        longest = max(len(tokenizer(example["expected"], add_special_tokens=False)["input_ids"]) for example in scored)
        max_new_tokens = min(512, longest + 8)  # room for a few extra words before EOS; 512 caps runaway text

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


def compare(before, after=None, tokenizer=None, dataset=None, *, names=("before", "after"), **evaluate_settings):
    """Evaluate two models on the same set (or take two results) and show what changed.

    Three ways to call it:
        compare(before_result, after_result)                      two `evaluate` results of the same set
        compare(base_model, tuned_model, tokenizer, dataset)      evaluates both models on `dataset`
        compare(lora_model, tokenizer=tokenizer, dataset=dataset) "before" is the same model with its adapters off

    `evaluate_settings` (max_new_tokens, measure_loss, ...) go to `evaluate` for each model.

    Example:
        >>> print(compare(before_result, after_result))  # doctest: +SKIP
    """
    if _is_tokenizer(after):
        raise FtlibError(
            "compare's second argument is the model (or result) after fine-tuning, but it got a tokenizer: "
            "compare(base_model, tuned_model, tokenizer, dataset), or for one LoRA model against its base, "
            "compare(model, tokenizer=tokenizer, dataset=dataset)"
        )
    for position, side in (("first", before), ("second", after)):
        if side is not None and not isinstance(side, EvaluationResult) and not callable(getattr(side, "forward", None)):
            raise FtlibError(
                f"compare's {position} argument must be a model or an evaluate() result, got {type(side).__name__}: "
                "compare(before_result, after_result) or compare(base_model, tuned_model, tokenizer, dataset)"
            )
    if after is None:
        if isinstance(before, EvaluationResult):
            raise FtlibError(
                "compare got one evaluate() result and nothing to compare it with: compare(before_result, after_result)"
            )
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
    if isinstance(before, EvaluationResult) and isinstance(after, EvaluationResult):
        unused = [name for name, value in (("tokenizer", tokenizer), ("dataset", dataset)) if value is not None]
        unused += sorted(evaluate_settings)
        if unused:
            raise FtlibError(
                f"compare got two evaluate() results, which are already measured, so {', '.join(unused)} would be "
                "ignored: compare(before_result, after_result) alone, or pass the models to evaluate them again"
            )
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


def _is_tokenizer(value):
    return value is not None and not isinstance(value, EvaluationResult) \
        and callable(getattr(value, "apply_chat_template", None)) and not callable(getattr(value, "forward", None))


def _require(tokenizer, dataset):
    if tokenizer is None or dataset is None:
        raise FtlibError(
            "to evaluate a model, compare needs its tokenizer and the held-out set: "
            "compare(base_model, tuned_model, tokenizer, dataset)"
        )
