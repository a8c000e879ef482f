"""evaluate, compare and diagnose: measured on the tiny model, diagnosed on real runs made to go wrong."""

import math

import pytest
import torch

from ftlib import format_dataset, generate, load_model, train
from ftlib.demo import load_headlines
from ftlib.errors import FtlibError
from ftlib.training.diagnosis import diagnose
from ftlib.evaluation import EvaluationResult, compare, evaluate, exact_match, normalize_answer
from ftlib.training.history import TrainingHistory


def _load(full_finetuning=False):
    return load_model("ftlib-tiny", load_in_4bit=False, max_seq_length=128, full_finetuning=full_finetuning)


def _formatted(rows, tokenizer):
    return format_dataset(rows, tokenizer, verbose=False)


# ------------------------------------------------------------------------------------------ scoring


def test_normalize_answer_ignores_case_punctuation_and_spacing():
    assert normalize_answer("  Positive. ") == "positive"
    assert normalize_answer("The  answer:\nNEGATIVE!") == "the answer negative"
    assert exact_match("Negative!", "negative")
    assert not exact_match("negative", "positive")
    assert not exact_match("not negative", "negative")  # exact, not "contains"


# ------------------------------------------------------------------------------------------ evaluate


def _teach(model, dataset, steps=10, learning_rate=3e-3):
    """A few plain full-batch steps on `dataset`, so even an untrained base learns to answer in words."""
    batch = max(len(row) for row in dataset["input_ids"])
    input_ids = torch.tensor([row + [0] * (batch - len(row)) for row in dataset["input_ids"]])
    labels = torch.tensor([row + [-100] * (batch - len(row)) for row in dataset["labels"]])
    attention_mask = (labels != -100) | (torch.arange(batch) < torch.tensor([[len(r)] for r in dataset["input_ids"]]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    model.train()
    for _ in range(steps):
        model(input_ids=input_ids, attention_mask=attention_mask.long(), labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def test_accuracy_counts_exactly_the_answers_the_model_gives(tiny_model):
    model, tokenizer = tiny_model
    rows = load_headlines("test")[:10]
    _teach(model, _formatted(rows, tokenizer))
    prompts = list(_formatted(rows, tokenizer)["prompt"])
    said = generate(model, tokenizer, prompts, max_new_tokens=6, use_chat_template=False)
    usable = [index for index, text in enumerate(said) if normalize_answer(text)]
    assert len(usable) >= 4, f"the model should say something for most prompts, got {said}"
    # Known answers: the first half expect what the model really says (with other case and punctuation),
    # the rest expect something it never says.
    expected_right = set(usable[: len(usable) // 2])
    known = [
        {"question": rows[index]["question"],
         "answer": said[index].strip().upper() + "." if index in expected_right else "zebra crossing"}
        for index in usable
    ]
    result = evaluate(model, tokenizer, known, max_new_tokens=6)

    assert result.accuracy == pytest.approx(len(expected_right) / len(usable))
    assert [example["correct"] for example in result.examples] == [index in expected_right for index in usable]
    assert [example["predicted"] for example in result.examples] == [said[index].strip() for index in usable]
    assert all(example["prompt"] == prompts[index] for example, index in zip(result.examples, usable))
    assert len(result.wrong) == len(usable) - len(expected_right)
    assert not model.training


def test_custom_scorer_gets_predicted_and_expected_and_may_give_partial_credit(tiny_model):
    model, tokenizer = tiny_model
    rows = load_headlines("test")[:4]
    calls = []

    def half_credit(predicted, expected):
        calls.append((predicted, expected))
        return 0.5

    result = evaluate(model, tokenizer, rows, scorer=half_credit, measure_loss=False)
    assert [expected for _, expected in calls] == [row["answer"] for row in rows]
    assert result.accuracy == pytest.approx(0.5)
    assert result.loss is None and result.perplexity is None
    assert all(example["correct"] is False and example["score"] == 0.5 for example in result.examples)
    assert "half_credit" in str(result)

    with pytest.raises(FtlibError, match="scorer must be a function"):
        evaluate(model, tokenizer, rows, scorer="exact")
    with pytest.raises(FtlibError, match="True/False or a number"):
        evaluate(model, tokenizer, rows, scorer=lambda predicted, expected: "yes", measure_loss=False)


def test_loss_is_the_mean_over_answer_tokens_whatever_the_batch_size(tiny_model):
    model, tokenizer = tiny_model
    dataset = _formatted(load_headlines("test")[:6], tokenizer)

    # By hand, one example at a time: the model's own mean loss times its number of scored tokens.
    total, tokens = 0.0, 0
    with torch.no_grad():
        for row in dataset:
            input_ids = torch.tensor([row["input_ids"]])
            labels = torch.tensor([row["labels"]])
            count = int((labels[0, 1:] != -100).sum())
            total += float(model(input_ids=input_ids, labels=labels).loss) * count
            tokens += count
    by_hand = total / tokens

    one = evaluate(model, tokenizer, dataset, batch_size=1, measure_accuracy=False)
    padded = evaluate(model, tokenizer, dataset, batch_size=4, measure_accuracy=False)
    assert one.loss == pytest.approx(by_hand, rel=1e-5)
    assert padded.loss == pytest.approx(by_hand, rel=1e-5)  # padding must not change the loss
    assert padded.perplexity == pytest.approx(math.exp(by_hand), rel=1e-5)
    assert all(example["loss"] > 0 for example in padded.examples)
    assert padded.accuracy is None


def test_raw_rows_formatted_data_and_dataset_dicts_give_the_same_result(tiny_model):
    model, tokenizer = tiny_model
    rows = load_headlines("test")[:5]
    from_rows = evaluate(model, tokenizer, rows, measure_accuracy=False)
    from_formatted = evaluate(model, tokenizer, _formatted(rows, tokenizer), measure_accuracy=False)
    split = format_dataset(load_headlines("test")[:10], tokenizer, test_size=0.5, verbose=False)
    from_split = evaluate(model, tokenizer, split, measure_accuracy=False)
    from_test = evaluate(model, tokenizer, split["test"], measure_accuracy=False)

    assert from_rows.loss == pytest.approx(from_formatted.loss, rel=1e-6)
    assert [e["expected"] for e in from_rows.examples] == [row["answer"] for row in rows]
    assert from_split.loss == pytest.approx(from_test.loss, rel=1e-6)
    assert len(from_split.examples) == len(split["test"])
    assert len(evaluate(model, tokenizer, rows, max_examples=2, measure_accuracy=False).examples) == 2

    raw_text = evaluate(model, tokenizer, [{"text": "Shares of Acme rose after strong sales."}] * 2)
    assert raw_text.accuracy is None and raw_text.loss > 0  # no answers to check: the loss is the measure


def test_bad_evaluation_input_names_the_fix(tiny_model):
    model, tokenizer = tiny_model
    rows = load_headlines("test")[:2]
    with pytest.raises(FtlibError, match="batch_size=8"):
        evaluate(model, tokenizer, rows, batch_size=0)
    with pytest.raises(FtlibError, match="max_examples"):
        evaluate(model, tokenizer, rows, max_examples=0)
    with pytest.raises(FtlibError, match="max_new_tokens"):
        evaluate(model, tokenizer, rows, max_new_tokens=-1, measure_loss=False)
    only_ids = _formatted(rows, tokenizer).select_columns(["input_ids", "labels"])
    with pytest.raises(FtlibError, match="prompt"):
        evaluate(model, tokenizer, only_ids)


def test_evaluate_refuses_settings_it_would_ignore(tiny_model):
    model, tokenizer = tiny_model
    rows = load_headlines("test")[:2]
    with pytest.raises(FtlibError, match="leave max_new_tokens out, or drop measure_accuracy=False"):
        evaluate(model, tokenizer, rows, max_new_tokens=4, measure_accuracy=False)
    with pytest.raises(FtlibError, match="leave scorer out"):
        evaluate(model, tokenizer, rows, scorer=exact_match, measure_accuracy=False)
    with pytest.raises(FtlibError, match="keep one of them"):
        evaluate(model, tokenizer, rows, measure_loss=False, measure_accuracy=False)
    with pytest.raises(FtlibError, match=r"leave max_seq_length out, or format again with format_dataset"):
        evaluate(model, tokenizer, _formatted(rows, tokenizer), max_seq_length=64)
    assert evaluate(model, tokenizer, rows, max_seq_length=64, measure_accuracy=False).loss > 0  # raw rows: used
    with pytest.raises(TypeError):
        evaluate(model, tokenizer, rows, 4)  # options after the dataset are named


def test_result_prints_summary_and_wrong_answers():
    examples = [
        {"prompt": "<s>Q: Acme shares jump\nA:", "expected": "positive", "predicted": "positive", "correct": True},
        {"prompt": "<s>Q: Bolt cuts jobs\nA:", "expected": "negative", "predicted": "positive", "correct": False},
    ]
    result = EvaluationResult(loss=0.4, perplexity=math.exp(0.4), accuracy=0.5, examples=examples)
    text = str(result)
    assert "0.4000" in text and "1.49" in text and "0.500" in text and "1 of 2 correct" in text
    assert "Bolt cuts jobs" in text and "Acme shares jump" not in text  # only the wrong one is listed
    assert "<s>Q:" not in result.table()  # the part every prompt shares is left out


# ------------------------------------------------------------------------------------------ compare


def test_compare_results_counts_fixed_and_broken_answers():
    def result(flags, loss):
        examples = [{"prompt": str(i), "expected": "x", "predicted": "x" if ok else "y", "correct": ok}
                    for i, ok in enumerate(flags)]
        return EvaluationResult(loss, math.exp(loss), sum(flags) / len(flags), examples)

    comparison = compare(result([False, False, True, True], 2.0), result([True, True, True, False], 0.5))
    assert len(comparison.fixed) == 2 and len(comparison.broken) == 1
    assert comparison.accuracy_change == pytest.approx(0.25)
    assert comparison.loss_change == pytest.approx(-1.5)
    assert "2 answers fixed, 1 broken" in str(comparison)
    with pytest.raises(FtlibError, match="same dataset"):
        compare(result([True], 1.0), result([True, False], 1.0))


def test_compare_refuses_a_wrong_mix_of_arguments(tiny_model):
    model, tokenizer = tiny_model
    rows = load_headlines("test")[:2]
    measured = EvaluationResult(1.0, math.e, 1.0, [{"prompt": "a", "expected": "x", "predicted": "x", "correct": True}])
    # evaluate's order (model, tokenizer, dataset) puts the tokenizer where the second model belongs
    with pytest.raises(FtlibError, match=r"compare\(base_model, tuned_model, tokenizer, dataset\)"):
        compare(model, tokenizer, rows)
    with pytest.raises(FtlibError, match=r"compare\(before_result, after_result\) alone"):
        compare(measured, measured, tokenizer, rows)
    with pytest.raises(FtlibError, match="max_new_tokens would be ignored"):
        compare(measured, measured, max_new_tokens=4)
    with pytest.raises(FtlibError, match="needs its tokenizer and the held-out set"):
        compare(model, measured)
    with pytest.raises(FtlibError, match="model or an evaluate"):
        compare(measured, rows)
    with pytest.raises(FtlibError, match="nothing to compare it with"):
        compare(measured)
    with pytest.raises(TypeError):
        compare(measured, measured, None, None, ("a", "b"))  # names are named


def test_compare_two_models_in_the_usual_order(tiny_model):
    model, tokenizer = tiny_model
    rows = load_headlines("test")[:4]
    other, _ = _load()
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(0.01)
    comparison = compare(model, other, tokenizer, rows, measure_accuracy=False, names=("base", "changed"))
    assert comparison.before.loss == pytest.approx(evaluate(model, tokenizer, rows, measure_accuracy=False).loss)
    assert comparison.after.loss != pytest.approx(comparison.before.loss, rel=1e-4)
    assert "base" in str(comparison) and "changed" in str(comparison)


def test_compare_one_lora_model_uses_the_base_as_before(tiny_model):
    from ftlib import add_lora

    model, tokenizer = tiny_model
    rows = load_headlines("test")[:4]
    base_loss = evaluate(model, tokenizer, rows, measure_accuracy=False).loss
    model = add_lora(model, r=8, use_gradient_checkpointing=False)
    with torch.no_grad():  # stand-in for training: give the adapters non-zero weights
        generator = torch.Generator().manual_seed(0)
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)

    comparison = compare(model, tokenizer=tokenizer, dataset=rows, measure_accuracy=False)
    assert comparison.before.loss == pytest.approx(base_loss, rel=1e-6)
    assert comparison.after.loss != pytest.approx(base_loss, rel=1e-3)
    assert comparison.loss_change == pytest.approx(comparison.after.loss - base_loss)
    with pytest.raises(FtlibError, match="two models"):
        compare(torch.nn.Linear(2, 2))


# ------------------------------------------------------------------------------------------ diagnose


def _history(loss, eval_steps=(), eval_loss=(), learning_rate=2e-4, stopped_reason="finished"):
    steps = list(range(1, len(loss) + 1))
    return TrainingHistory(steps=steps, loss=list(loss), learning_rate=[learning_rate] * len(loss),
                           eval_steps=list(eval_steps), eval_loss=list(eval_loss), stopped_reason=stopped_reason)


def test_diagnose_hand_written_histories():
    settling = [3.0 * 0.9 ** step + 0.6 for step in range(40)]
    healthy = diagnose(_history(settling, [10, 20, 30, 40], [1.2, 0.9, 0.8, 0.78]))
    assert healthy.verdict == "healthy" and healthy.step is None

    rising_eval = diagnose(_history([2.0 * 0.9 ** step for step in range(40)], [10, 20, 30, 40], [1.0, 0.7, 0.9, 1.2]))
    assert rising_eval.verdict == "over-fitted" and rising_eval.step == 20
    assert any("learning rate" in remedy.lower() for remedy in rising_eval.remedies)
    assert any("dropout" in remedy for remedy in rising_eval.remedies)

    to_zero = diagnose(_history([2.0 * 0.8 ** step for step in range(40)]))
    assert to_zero.verdict == "over-fitted"
    assert 2.0 * 0.8 ** (to_zero.step - 1) < 0.05  # began where the loss went under the threshold

    learned = diagnose(_history([2.0 * 0.8 ** step for step in range(40)], [10, 20, 30, 40], [0.3, 0.1, 0.01, 0.005]))
    assert learned.verdict == "healthy"  # near 0, but the held-out loss followed: learned, not memorised
    assert "went down with it" in learned.explanation

    still_falling = diagnose(_history([6.0 - 0.07 * step for step in range(60)]))
    assert still_falling.verdict == "under-fitted" and still_falling.step == 60
    assert "still learning at step 60" in str(still_falling) and "still falling" in still_falling.explanation

    stalled = diagnose(_history([3.0 - 0.001 * step for step in range(30)], learning_rate=1e-6))
    assert stalled.verdict == "under-fitted"
    assert any("learning_rate=0.0002" in remedy for remedy in stalled.remedies)

    nan = diagnose(_history([2.0, 1.5, float("nan"), float("nan")]))
    assert nan.verdict == "diverged" and nan.step == 3
    guard_stop = diagnose(_history([2.0, 1.5, 1.4], stopped_reason="nan_loss"))
    assert guard_stop.verdict == "diverged"

    climbing = diagnose(_history([2.0, 1.5, 1.0, 0.8, 0.8, 0.9, 1.5, 2.5, 3.5, 4.0, 4.5, 5.0], learning_rate=1e-2))
    assert climbing.verdict == "diverged" and 5 <= climbing.step <= 9
    assert any("learning_rate=0.001" in remedy for remedy in climbing.remedies)
    text = str(climbing)
    assert text.startswith("Diagnosis: diverged (from step") and "What to try:" in text

    with pytest.raises(FtlibError, match="no logged training loss"):
        diagnose(TrainingHistory())
    with pytest.raises(FtlibError, match="history that train"):
        diagnose([1.0, 2.0])


def _train_settings(tmp_path, **overrides):
    settings = dict(per_device_train_batch_size=4, gradient_accumulation_steps=1, warmup_steps=0,
                    output_dir=str(tmp_path / "run"))
    settings.update(overrides)
    return settings


def test_diagnose_a_real_over_fitted_run(tmp_path):
    # Every weight trains on 8 examples for 20 epochs: the model memorises them and stops generalising.
    model, tokenizer = _load(full_finetuning=True)
    train_rows, held_out = load_headlines("train")[:8], load_headlines("test")[:16]
    history = train(model, tokenizer, _formatted(train_rows, tokenizer), eval_dataset=_formatted(held_out, tokenizer),
                    max_steps=40, eval_steps=4, learning_rate=3e-3, **_train_settings(tmp_path))
    diagnosis = diagnose(history)
    assert diagnosis.verdict == "over-fitted", f"{diagnosis}\n{history.loss}\n{history.eval_loss}"
    best = history.eval_steps[history.eval_loss.index(min(history.eval_loss))]
    assert diagnosis.step == best < history.steps[-1]
    assert "fewer" in " ".join(diagnosis.remedies)

    # What a memorised model looks like to evaluate: its training answers all right, held-out loss higher.
    seen = evaluate(model, tokenizer, train_rows, max_new_tokens=4)
    unseen = evaluate(model, tokenizer, held_out, measure_accuracy=False)
    assert seen.accuracy == 1.0, seen.table()
    assert seen.loss < unseen.loss


def test_diagnose_a_real_under_fitted_run(tmp_path):
    from ftlib import add_lora

    model, tokenizer = _load()
    model = add_lora(model, r=8, use_gradient_checkpointing=False)
    history = train(model, tokenizer, _formatted(load_headlines("train")[:32], tokenizer),
                    max_steps=10, learning_rate=1e-6, **_train_settings(tmp_path))
    diagnosis = diagnose(history)
    assert diagnosis.verdict == "under-fitted", f"{diagnosis}\n{history.loss}"
    assert "Raise the learning rate" in diagnosis.remedies[0]


def test_diagnose_a_real_diverged_run(tmp_path):
    model, tokenizer = _load(full_finetuning=True)
    history = train(model, tokenizer, _formatted(load_headlines("train")[:32], tokenizer),
                    max_steps=10, learning_rate=1.0, **_train_settings(tmp_path))
    diagnosis = diagnose(history)
    assert diagnosis.verdict == "diverged", f"{diagnosis}\n{history.loss}"
    assert diagnosis.step <= 5
    assert "Lower the learning rate" in diagnosis.remedies[0]
