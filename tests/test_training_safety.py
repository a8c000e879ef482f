"""train's safety features on real tiny runs: NaN guard, interrupt, resume, early stopping, out-of-memory."""

import math
import os

import pytest
import torch
from transformers import TrainerCallback

from ftlib import add_lora, format_dataset, load_model, train
from ftlib.training import safety
from ftlib.demo import load_headlines
from ftlib.errors import FtlibError
from ftlib.training.diagnosis import diagnose


@pytest.fixture(scope="module")
def rows():
    return load_headlines("train")[:32]


def _lora_model():
    model, tokenizer = load_model("ftlib-tiny", load_in_4bit=False, max_seq_length=128)
    return add_lora(model, r=8, use_gradient_checkpointing=False), tokenizer


def _trainable(model):
    return {name: parameter.detach().clone() for name, parameter in model.named_parameters() if parameter.requires_grad}


def _same(first, second, tolerance=0.0):
    return first.keys() == second.keys() and all(
        torch.allclose(first[name], second[name], atol=tolerance, rtol=0) for name in first
    )


class _AtStep(TrainerCallback):
    """Runs `action(model)` at the end of optimizer step `step` (before that step is logged or saved)."""

    def __init__(self, step, action):
        self.step, self.action = step, action

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            self.action(model)


def _settings(output_dir, **overrides):
    settings = dict(per_device_train_batch_size=4, gradient_accumulation_steps=1, learning_rate=1e-3,
                    warmup_steps=2, output_dir=str(output_dir), verbose=False)
    settings.update(overrides)
    return settings


# ------------------------------------------------------------------------------------------ NaN guard


def test_nan_loss_stops_at_once_and_keeps_the_last_good_weights(tmp_path, rows, capsys):
    model, tokenizer = _lora_model()
    poison = {"armed": False}

    def make_nan(module, inputs, output):  # the next forward pass after arming returns NaN activations
        if poison["armed"]:
            poison["armed"] = False
            return output * float("nan")
        return output

    model.get_input_embeddings().register_forward_hook(make_nan)
    kept = {}

    def arm(trained_model):
        kept.update(_trainable(trained_model))
        poison["armed"] = True

    history = train(model, tokenizer, format_dataset(rows, tokenizer, verbose=False), max_steps=20,
                    callbacks=[_AtStep(3, arm)], **_settings(tmp_path))

    assert history.stopped_reason == "nan_loss"
    assert history.steps[-1] == 4, history.steps  # stopped on the step the loss turned NaN, not at 20
    assert math.isnan(history.loss[-1]) and all(math.isfinite(value) for value in history.loss[:-1])
    after = _trainable(model)
    assert all(torch.isfinite(value).all() for value in after.values())
    assert _same(after, kept)  # the NaN update was never applied
    printed = capsys.readouterr().out
    assert "NaN" in printed and "learning rate too high" in printed and "fp16" in printed
    assert "learning_rate=0.0001" in printed  # a tenth of the one used
    diagnosis = diagnose(history)
    assert diagnosis.verdict == "diverged" and diagnosis.step == 4


# ------------------------------------------------------------------------------------------ interrupt


def test_interrupt_from_a_callback_keeps_weights_history_and_checkpoints(tmp_path, rows, capsys):
    model, tokenizer = _lora_model()
    before = _trainable(model)
    at_interrupt = {}

    def interrupt(trained_model):
        at_interrupt.update(_trainable(trained_model))
        raise KeyboardInterrupt

    history = train(model, tokenizer, format_dataset(rows, tokenizer, verbose=False), max_steps=20, save_steps=2,
                    callbacks=[_AtStep(5, interrupt)], **_settings(tmp_path))

    assert history.stopped_reason == "interrupted"
    assert history.steps == [1, 2, 3, 4] and len(history.loss) == 4  # step 5 ended before it was logged
    after = _trainable(model)
    assert _same(after, at_interrupt)  # everything learned up to the interrupt is still in the model
    assert not _same(after, before)
    assert not model.training
    assert os.path.isdir(tmp_path / "checkpoint-4") and os.path.isdir(tmp_path / "checkpoint-2")
    printed = capsys.readouterr().out
    assert "interrupted at step 5" in printed and "resume=True" in printed and "checkpoint-4" in printed


# ------------------------------------------------------------------------------------------ resume


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_run(tmp_path, rows):
    dataset = None
    settings = dict(max_steps=10, save_steps=4)

    model, tokenizer = _lora_model()
    dataset = format_dataset(rows, tokenizer, verbose=False)
    uninterrupted = train(model, tokenizer, dataset, **_settings(tmp_path / "whole", **settings))
    whole_weights = _trainable(model)

    def interrupt(trained_model):
        raise KeyboardInterrupt

    model, tokenizer = _lora_model()
    stopped = train(model, tokenizer, dataset, callbacks=[_AtStep(6, interrupt)],
                    **_settings(tmp_path / "parts", **settings))
    assert stopped.stopped_reason == "interrupted"

    # A new session: fresh model and adapters, then resume from the last checkpoint (step 4).
    model, tokenizer = _lora_model()
    resumed = train(model, tokenizer, dataset, resume=True, **_settings(tmp_path / "parts", **settings))

    assert resumed.steps == list(range(5, 11))
    assert resumed.loss == pytest.approx(uninterrupted.loss[4:], rel=1e-3, abs=1e-4)
    assert stopped.loss[:4] == pytest.approx(uninterrupted.loss[:4], rel=1e-5)
    assert _same(_trainable(model), whole_weights, tolerance=1e-4)


def test_resume_without_a_checkpoint_says_how_to_make_one(tmp_path, rows):
    model, tokenizer = _lora_model()
    with pytest.raises(FtlibError, match="save_steps"):
        train(model, tokenizer, rows[:8], max_steps=2, resume=True, **_settings(tmp_path / "empty"))


# ------------------------------------------------------------------------------------------ early stopping


class _WeightsAtEvaluation(TrainerCallback):
    def __init__(self):
        self.weights = {}

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        self.weights[state.global_step] = {name: value.detach().clone() for name, value in model.state_dict().items()}


@pytest.mark.slow
def test_early_stopping_stops_and_keeps_the_best_model(tmp_path):
    # Full fine-tune on 8 examples at a high rate: held-out loss bottoms out, then rises (over-fitting).
    model, tokenizer = load_model("ftlib-tiny", load_in_4bit=False, max_seq_length=128, full_finetuning=True)
    train_set = format_dataset(load_headlines("train")[:8], tokenizer, verbose=False)
    held_out = format_dataset(load_headlines("test")[:16], tokenizer, verbose=False)
    snapshots = _WeightsAtEvaluation()
    history = train(model, tokenizer, train_set, eval_dataset=held_out, max_steps=80, eval_steps=4,
                    early_stopping_patience=2, callbacks=[snapshots],
                    **_settings(tmp_path, learning_rate=3e-3, warmup_steps=0))

    assert history.stopped_reason == "early_stopping", (history.eval_steps, history.eval_loss)
    assert history.steps[-1] < 80
    best = history.eval_steps[history.eval_loss.index(min(history.eval_loss))]
    assert history.best_step == best
    assert history.eval_steps[-1] == best + 2 * 4  # two evaluations without improvement, then stop
    final = {name: value for name, value in model.state_dict().items()}
    assert _same(final, snapshots.weights[best], tolerance=1e-6)  # the best model, not the last
    assert not _same(final, snapshots.weights[history.eval_steps[-1]], tolerance=1e-6)


def test_early_stopping_settings_are_checked():
    callback, settings = safety.early_stopping(3)
    assert callback.early_stopping_patience == 3
    assert settings["load_best_model_at_end"] and settings["metric_for_best_model"] == "eval_loss"
    with pytest.raises(FtlibError, match="early_stopping_patience=3"):
        safety.early_stopping(0)


# ------------------------------------------------------------------------------------------ out of memory


def test_out_of_memory_during_training_is_raised_with_fixes_for_the_run(tmp_path, rows):
    model, tokenizer = _lora_model()

    def run_out(trained_model):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(torch.OutOfMemoryError) as caught:
        train(model, tokenizer, rows[:16], max_steps=5, callbacks=[_AtStep(2, run_out)], **_settings(tmp_path))
    message = str(caught.value)
    assert "Out of GPU memory" in message and "batch size 4" in message
    assert "per_device_train_batch_size=2 with gradient_accumulation_steps=2" in message
    assert "load_in_4bit=True" in message  # this model was loaded in 16/32-bit
    assert "Tried to allocate 2.00 GiB" in message  # the original error is kept
    assert not model.training


def test_out_of_memory_message_names_figures_and_fixes_for_the_settings():
    figures = {"gpu": "Tesla T4", "peak_reserved": "14.2 GB", "peak_allocated": "13.9 GB", "free": "0.1 GB",
               "total": "14.7 GB"}
    message = safety.out_of_memory_message(
        {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, "max_seq_length": 4096,
         "load_in_4bit": False, "use_gradient_checkpointing": False, "r": 64, "model_name": "some-8b"},
        figures=figures,
    )
    assert "peak reserved 14.2 GB of 14.7 GB" in message and "Tesla T4" in message
    assert "per_device_train_batch_size=4 with gradient_accumulation_steps=2" in message
    assert "max_seq_length=2048" in message
    assert "load_in_4bit=True" in message
    assert "use_gradient_checkpointing=\"offload\") (the default)" in message
    assert "r=16" in message

    quantised = safety.out_of_memory_message(
        {"per_device_train_batch_size": 1, "max_seq_length": 256, "load_in_4bit": True,
         "use_gradient_checkpointing": True}, figures={})
    assert "per_device_train_batch_size=" not in quantised and "load_in_4bit=True" not in quantised
    assert "offload" in quantised
    budgeted = safety.out_of_memory_message({"use_gradient_checkpointing": "auto"}, figures={})
    assert "memory_budget_gb" in budgeted and 'use_gradient_checkpointing="offload"' in budgeted

    assert safety.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert safety.is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not safety.is_out_of_memory(ValueError("out of memory"))
    assert not safety.is_out_of_memory(RuntimeError("shape mismatch"))


def test_interrupt_message_says_how_to_resume(tmp_path):
    with_checkpoint = safety.interrupt_message(23, 60, "outputs", "outputs/checkpoint-20")
    assert "step 23 of 60" in with_checkpoint and "step 20" in with_checkpoint and "resume=True" in with_checkpoint
    without = safety.interrupt_message(3, 60, "outputs", None)
    assert "save_steps=" in without and "resume=True" not in without
    assert safety.last_checkpoint(tmp_path / "missing") is None
    for step in (5, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
    assert safety.last_checkpoint(tmp_path).endswith("checkpoint-10")


def test_float16_training_gets_float32_adapters_back():
    """TRL 1.15 makes a quantised model's adapters bf16; a float16 run needs them in float32 for its loss scaler."""
    from ftlib.training.run import keep_adapters_out_of_bfloat16

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)).to(torch.bfloat16)
    model[0].requires_grad_(False)  # a frozen bf16 layer stays as it is
    assert keep_adapters_out_of_bfloat16(model) == 2
    assert model[1].weight.dtype == torch.float32 and model[1].bias.dtype == torch.float32
    assert model[0].weight.dtype == torch.bfloat16
    assert keep_adapters_out_of_bfloat16(model) == 0
