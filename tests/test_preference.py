"""Preference tuning through train(method=...): DPO, ORPO, KTO on the tiny model, and their bad inputs."""

import pytest
import torch
from transformers import TrainerCallback

from ftlib import add_lora, load_model, train
from ftlib.demo.preferences import load_preferences, make_preference_splits
from ftlib.errors import FtlibError
from ftlib.notebook.live_plot import LiveLossPlot
from ftlib.training.log_probabilities import PlainLogProbabilities
from ftlib.training.preference import check_preference_rows, preference_accuracy

PAIR = {"prompt": "Is 2+2 4?", "chosen": "Yes.", "rejected": "No."}


def _lora_model():
    model, tokenizer = load_model("ftlib-tiny", load_in_4bit=False, max_seq_length=128)
    return add_lora(model, r=16, use_gradient_checkpointing=False), tokenizer


@pytest.mark.parametrize("rows, named", [
    ([PAIR, {**PAIR, "rejected": " Yes. "}], "row 1: chosen and rejected are the same"),
    ([{**PAIR, "chosen": "  "}], "row 0: chosen is empty"),
    ([{**PAIR, "rejected": [{"role": "assistant", "content": ""}]}], "row 0: rejected is empty"),
    ([{"question": "q", "answer": "a"}], "row 0 has columns ['answer', 'question'] but not"),
])
def test_bad_preference_rows_name_the_row_and_the_fix(rows, named):
    with pytest.raises(FtlibError, match=named.replace("[", r"\[").replace("]", r"\]")):
        check_preference_rows(rows)


def test_a_kto_label_that_is_not_true_or_false_is_refused():
    rows = [{"prompt": "p", "completion": "c", "label": True}, {"prompt": "p", "completion": "c", "label": "yes"}]
    with pytest.raises(FtlibError, match="row 1: label is 'yes', not True or False"):
        check_preference_rows(rows, ("prompt", "completion", "label"))


def test_unknown_method_and_misplaced_options_are_refused_before_training():
    model, tokenizer = _lora_model()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    with pytest.raises(FtlibError, match="method must be one of 'sft', 'dpo', 'orpo', 'kto', 'pretrain'"):
        train(model, tokenizer, [PAIR], method="ppo")
    with pytest.raises(FtlibError, match="beta=0.1 has no effect with method='sft'.*'dpo' and 'orpo' and 'kto'"):
        train(model, tokenizer, [PAIR], beta=0.1)
    with pytest.raises(FtlibError, match="dataset row 0: chosen and rejected are the same"):
        train(model, tokenizer, {"train": [{**PAIR, "rejected": "Yes."}]}, method="dpo")
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())


def test_plain_log_probabilities_match_the_log_softmax_of_the_logits():
    generator = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(5, 8, generator=generator), torch.randn(11, 8, generator=generator)
    targets = torch.tensor([0, 3, 10, 7, 7])
    log_probs, entropy, _, _, is_top1 = PlainLogProbabilities.apply(hidden, weight, None, targets, 1.0, 4096,
                                                                    outputs=("entropy", "is_top1"))
    expected = torch.log_softmax(hidden @ weight.T, dim=-1)
    assert torch.allclose(log_probs, expected[torch.arange(5), targets], atol=1e-5)
    assert torch.allclose(entropy, -(expected.exp() * expected).sum(-1), atol=1e-5)
    assert is_top1.tolist() == (expected.argmax(-1) == targets).tolist()


@pytest.mark.slow
def test_dpo_raises_held_out_preference_accuracy_above_0_85():
    model, tokenizer = load_model("ftlib-tiny", load_in_4bit=False, max_seq_length=128, full_finetuning=True)
    held_out = load_preferences("test")
    before = preference_accuracy(model, tokenizer, held_out)
    plot = LiveLossPlot(method="dpo")
    history = train(model, tokenizer, load_preferences("train"), method="dpo", max_steps=80, learning_rate=1e-3,
                    callbacks=[plot], verbose=False)
    after = preference_accuracy(model, tokenizer, held_out)
    assert 0.35 <= before <= 0.65 and after >= 0.85, (before, after)
    _, margins = history.metric("rewards/margins")
    assert sum(margins[-5:]) / 5 > sum(margins[:5]) / 5 + 0.5
    assert model.ftlib_training["method"] == "dpo"
    assert len(plot.draw().axes) == 2 and plot.metric_points["rewards/margins"][1] == margins


class _WatchReference(TrainerCallback):
    """Records, at every step, the adapters the model holds and how many non-adapter weights it has."""

    def __init__(self, model):
        self.model, self.seen = model, []

    def on_step_end(self, args, state, control, **kwargs):
        base = sum(parameter.numel() for name, parameter in self.model.named_parameters() if "lora_" not in name)
        self.seen.append((sorted(self.model.peft_config), base))


def test_dpo_on_lora_uses_a_frozen_adapter_copy_as_reference_not_a_second_model():
    model, tokenizer = _lora_model()
    base_weights = sum(parameter.numel() for name, parameter in model.named_parameters() if "lora_" not in name)
    adapters_before = {name: value.detach().clone() for name, value in model.named_parameters() if value.requires_grad}
    watch = _WatchReference(model)
    train(model, tokenizer, load_preferences("train")[:32], method="dpo", max_steps=3, learning_rate=5e-3,
          callbacks=[watch], verbose=False)
    # During training: the trained adapter and its frozen "ref" copy, on one set of base weights.
    assert watch.seen and all(seen == (["default", "ref"], base_weights) for seen in watch.seen)
    # Afterwards: only the trained adapter is left, and it changed.
    assert list(model.peft_config) == ["default"]
    assert any(not torch.equal(adapters_before[name], value) for name, value in model.named_parameters()
               if name in adapters_before)


@pytest.mark.slow
def test_orpo_raises_its_reward_margin():
    model, tokenizer = load_model("ftlib-tiny", load_in_4bit=False, max_seq_length=128, full_finetuning=True)
    history = train(model, tokenizer, load_preferences("train")[:128], method="orpo", max_steps=30,
                    learning_rate=1e-3, beta=1.0, verbose=False)
    _, margins = history.metric("rewards/margins")
    _, log_odds = history.metric("log_odds_ratio")
    assert sum(margins[-10:]) / 10 > sum(margins[:10]) / 10, margins
    assert sum(log_odds[-10:]) / 10 > sum(log_odds[:10]) / 10, log_odds


@pytest.mark.slow
def test_kto_opens_a_held_out_margin_between_good_and_bad_answers():
    model, tokenizer = load_model("ftlib-tiny", load_in_4bit=False, max_seq_length=128, full_finetuning=True)
    history = train(model, tokenizer, {"train": load_preferences("train", "kto")[:128],
                                       "test": load_preferences("test", "kto")[:32]},
                    method="kto", max_steps=40, learning_rate=1e-3, eval_steps=40, verbose=False)
    # The reference is the model before training, so every margin starts at 0: a positive held-out margin
    # means good answers gained probability against bad ones on rows the model never trained on.
    _, held_out_margins = history.metric("eval_rewards/margins")
    assert held_out_margins and held_out_margins[-1] > 0, held_out_margins


def test_generated_preferences_differ_only_in_direction():
    splits = make_preference_splits(train_size=8, test_size=4)
    for row in splits["train_pairs"]:
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        assert chosen.split(".")[0] != rejected.split(".")[0] and chosen != rejected
    assert [row["label"] for row in splits["train_kto"]] == [True, False] * 4


def _preference_history(margins, chosen, rejected):
    from ftlib.training.history import TrainingHistory

    steps = list(range(1, len(margins) + 1))
    history = TrainingHistory()
    for step, margin, good, bad in zip(steps, margins, chosen, rejected):
        history.record({"loss": 0.69 - 0.01 * step, "learning_rate": 1e-3, "rewards/margins": margin,
                        "rewards/chosen": good, "rewards/rejected": bad}, step, step / len(steps))
    return history


def test_diagnose_reads_preference_histories():
    from ftlib import diagnose

    flat = diagnose(_preference_history([0.01] * 20, [0.0] * 20, [0.0] * 20))
    assert flat.verdict == "under-fitted" and "never grew" in flat.explanation
    falling = [-0.2 * step for step in range(20)]
    drifting = diagnose(_preference_history([0.1 * step for step in range(20)], falling,
                                            [value - 0.1 * step for step, value in enumerate(falling)]))
    assert drifting.verdict == "drifted" and "Both rewards fell" in drifting.explanation
    growing = diagnose(_preference_history([0.1 * step for step in range(20)], [0.05 * step for step in range(20)],
                                           [-0.05 * step for step in range(20)]))
    assert growing.verdict not in ("drifted", "under-fitted")


def test_committed_preference_files_are_what_the_generator_writes(tmp_path):
    from ftlib.demo import DATA_FOLDER
    from ftlib.demo.preferences import write_preferences

    for name, path in write_preferences(tmp_path).items():
        assert path.read_text() == (DATA_FOLDER / "preferences" / path.name).read_text(), name


def test_live_plot_draws_a_methods_metrics_beside_the_loss():
    from types import SimpleNamespace

    plot = LiveLossPlot(metrics=["reward"])
    assert LiveLossPlot(method="dpo").metrics == ["rewards/margins", "rewards/accuracies"]
    plot.on_train_begin(None, SimpleNamespace(max_steps=3), None)
    for step, reward in enumerate([0.1, 0.4, 0.9], 1):
        plot.on_log(None, SimpleNamespace(global_step=step), None, logs={"loss": 1.0 / step, "reward": reward})
    plot.on_log(None, SimpleNamespace(global_step=3), None, logs={"eval_loss": 0.5, "eval_reward": 0.8})
    figure = plot.draw()
    loss_axes, metric_axes = figure.axes
    assert [list(line.get_ydata()) for line in metric_axes.lines] == [[0.1, 0.4, 0.9], [0.8]]
    assert len(loss_axes.lines) == 2 and len(LiveLossPlot().draw().axes) == 1


def test_format_dataset_recognises_preference_and_kto_rows_and_train_takes_them(tiny_tokenizer):
    from ftlib import format_dataset

    pairs = format_dataset(load_preferences("test")[:10], tiny_tokenizer, test_size=0.2, verbose=False)
    assert pairs["train"].ftlib_shape == "preference pairs" and len(pairs["test"]) == 2
    assert pairs["train"].column_names == ["prompt", "chosen", "rejected"]
    kto = format_dataset(load_preferences("test", "kto")[:4], tiny_tokenizer, verbose=False)
    assert kto.ftlib_shape == "kto" and kto["label"] == [True, False, True, False]
    with pytest.raises(FtlibError, match="data row 1: label is 'no', not True or False"):
        format_dataset([{"prompt": "p", "completion": "c", "label": True},
                        {"prompt": "p", "completion": "c", "label": "no"}], tiny_tokenizer, verbose=False)
    with pytest.raises(FtlibError, match="data row 0: chosen and rejected are the same"):
        format_dataset([{**PAIR, "rejected": PAIR["chosen"]}], tiny_tokenizer, verbose=False)
