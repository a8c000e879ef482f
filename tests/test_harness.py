"""run_harness: EleutherAI's lm-evaluation-harness on a local task built from held-out rows, offline."""

import socket
import sys

import pytest
import torch

from ftlib import add_lora, evaluate, format_dataset, load_model, train
from ftlib.demo import load_headlines
from ftlib.errors import FtlibError
from ftlib.harness import run_harness


@pytest.fixture
def no_network(monkeypatch):
    """Any connection or name lookup fails the test: the harness must not reach a hub or download a metric."""
    attempts = []

    def refuse(*arguments, **keywords):
        attempts.append(arguments)
        raise OSError("the network is off in this test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


def test_the_harness_runs_offline_on_held_out_rows(tiny_model, no_network):
    model, tokenizer = tiny_model
    model = add_lora(model, use_gradient_checkpointing=False)  # a PEFT model goes in as it is
    model.train()
    rows = load_headlines("test")[:16]
    random_state = torch.random.get_rng_state()
    result = run_harness(model, tokenizer, rows)
    assert no_network == []
    assert torch.equal(torch.random.get_rng_state(), random_state)  # scoring is greedy: nothing reseeded
    assert 0.0 <= result.score <= 1.0 and set(result.scores) == {"acc"}
    assert result.num_examples == 16 and result.task_name == "ftlib_heldout" and result.num_fewshot == 0
    assert result.choices == ["negative", "positive"]
    assert model.training  # left in the mode it was in
    # lm-eval asked each question the way format_dataset wrote it for training: the same chat template.
    trained_prompts = format_dataset(rows, tokenizer, verbose=False)["prompt"]
    assert [example["prompt"] for example in result.examples] == trained_prompts
    assert sum(example["correct"] for example in result.examples) == round(result.score * 16)
    assert "acc" in str(result) and "16 held-out examples" in str(result)


@pytest.mark.filterwarnings("ignore:the chat template ends each assistant turn")
@pytest.mark.parametrize("settings, plain", [
    (dict(system_prompt="You rate headlines."), False),
    (dict(template="chatml"), False),
    ({}, True),  # prompt/completion rows: joined as they are, no chat template
])
def test_the_harness_asks_as_format_dataset_wrote_it(tiny_model, settings, plain):
    model, tokenizer = tiny_model
    rows = load_headlines("test")[:4]
    if plain:
        rows = [{"prompt": row["question"] + "\nAnswer: ", "completion": row["answer"]} for row in rows]
    result = run_harness(model, tokenizer, rows, **settings)
    assert [example["prompt"] for example in result.examples] == \
        format_dataset(rows, tokenizer, verbose=False, **settings)["prompt"]


@pytest.mark.slow
def test_fine_tuning_raises_the_harness_score(tmp_path, no_network):
    # Full fine-tune, 30 steps of 8 at lr 1e-3: the tiny model's quickest route to the headline task.
    model, tokenizer = load_model("ftlib-tiny", load_in_4bit=False, max_seq_length=128, full_finetuning=True)
    held_out = load_headlines("test")[:16]
    before = run_harness(model, tokenizer, held_out)
    train(model, tokenizer, format_dataset(load_headlines("train"), tokenizer, verbose=False), max_steps=30,
          learning_rate=1e-3, per_device_train_batch_size=8, gradient_accumulation_steps=1, warmup_steps=0,
          output_dir=str(tmp_path / "run"), verbose=False)
    after = run_harness(model, tokenizer, held_out)
    assert before.score <= 0.6 < 0.9 <= after.score, (before, after)

    # Where the harness and ftlib.evaluate measure the same thing (the whole answer, generated), they agree.
    generated = run_harness(model, tokenizer, held_out, metric="exact_match")
    assert generated.score == evaluate(model, tokenizer, held_out, measure_loss=False).accuracy
    assert no_network == []


def test_a_label_followed_by_a_reason_is_scored_by_its_first_word(tiny_model, no_network):
    model, tokenizer = tiny_model
    rows = load_headlines("test", reasons=True)[:4]
    result = run_harness(model, tokenizer, rows, metric="first_word", num_fewshot=1,
                         fewshot_rows=load_headlines("train", reasons=True)[:8])
    assert 0.0 <= result.score <= 1.0 and set(result.scores) == {"exact_match"} and result.num_fewshot == 1
    first = result.examples[0]
    assert first["expected"].startswith(("Negative. ", "Positive. "))
    assert first["correct"] == (first["scored"].lower() == first["expected"].split(".")[0].lower())
    # The solved example is a whole answer, label and reason, as the model was trained to write it.
    shown = first["prompt"].split("<|assistant|>\n")[1]
    assert shown.startswith(("Negative. ", "Positive. ")) and len(shown.split()) > 3
    assert no_network == []


def test_choices_come_from_the_answers_or_their_first_words(tiny_tokenizer):
    from ftlib.harness import _choices, _documents, _label_index

    labels, _ = _documents(load_headlines("test")[:16], None)
    assert _choices(labels, None) == ["negative", "positive"]
    reasons, _ = _documents(load_headlines("test", reasons=True)[:16], None)
    assert _choices(reasons, None) == ["Negative", "Positive"]
    assert [_label_index(doc, ["Negative", "Positive"]) for doc in reasons] == \
        [0 if doc["answer"].startswith("Negative") else 1 for doc in reasons]
    free_text = [{"question": f"Question {index}?", "answer": f"Answer number {index}."} for index in range(30)]
    with pytest.raises(FtlibError, match="not a label set.*metric='exact_match'"):
        run_harness(None, tiny_tokenizer, free_text)
    with pytest.raises(FtlibError, match="none of the choices"):
        run_harness(None, tiny_tokenizer, load_headlines("test")[:4], choices=["up", "down"])


@pytest.mark.parametrize("settings, message", [
    (dict(metric="bleu"), "metric must be one of"),
    (dict(metric="first_word", choices=["positive", "negative"]), "leave choices out"),
    (dict(max_new_tokens=4), "generates nothing"),
    (dict(fewshot_rows=[{"question": "q", "answer": "positive"}]), "num_fewshot > 0"),
    (dict(num_fewshot=-1), "num_fewshot must be"),
    (dict(batch_size=0), "batch_size must be"),
])
def test_bad_settings_name_the_fix(tiny_tokenizer, settings, message):
    with pytest.raises(FtlibError, match=message):
        run_harness(None, tiny_tokenizer, load_headlines("test")[:4], **settings)


def test_rows_without_answers_name_the_fix(tiny_tokenizer):
    with pytest.raises(FtlibError, match="raw text.*measure_accuracy=False"):
        run_harness(None, tiny_tokenizer, [{"text": "Shares rose."}] * 4)


def test_a_missing_lm_eval_names_the_install(tiny_tokenizer, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # what Python does when the package is not installed
    with pytest.raises(FtlibError, match=r'pip install "ftlib\[harness\]".*pip install lm-eval'):
        run_harness(None, tiny_tokenizer, load_headlines("test")[:4])
