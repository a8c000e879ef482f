"""The trainer ftlib runs, and the callbacks that keep the history and print progress."""

import functools
import inspect
import time
from contextlib import contextmanager

import torch
from transformers import Trainer, TrainerCallback
from trl import SFTTrainer
from trl.trainer import utils as trl_utils

from ftlib.speed import switches


class FtlibTrainer(SFTTrainer):
    """TRL's SFTTrainer, with the model's own loss where TRL's fused loss head cannot run, and less Python per step.

    It writes only checkpoints (checkpoint-N folders) into output_dir, never a model card there.

    TRL computes the loss with a Triton kernel, which needs a GPU; on a CPU (and where Triton is missing) the
    model's own cross-entropy gives the same loss. The FLOP count for the logs is computed from a parameter count
    taken once instead of once per micro-batch, and the model is switched to training mode only when it is not.
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        on_gpu = inputs["input_ids"].device.type in ("cuda", "xpu")
        if on_gpu and getattr(trl_utils, "_ChunkedLogProbFunction", None) is not None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if not return_outputs and switches.on("labelled_logits") and "labels" in inputs:
            loss = _loss_on_labelled_positions(model, inputs, num_items_in_batch if self.model_accepts_loss_kwargs
                                               else None)
            if loss is not None:
                if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                    loss = loss * self.accelerator.num_processes  # as Trainer.compute_loss scales it
                return loss
        return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    def create_model_card(self, *args, **kwargs):
        """Write no README.md: output_dir may hold the user's own, and `ftlib.save` writes the card beside the weights."""

    def floating_point_ops(self, inputs):
        # transformers recounts the parameters for every micro-batch, a walk over every module (thousands
        # for an 8B model with adapters); the count cannot change during training, so take it once.
        if getattr(self, "_ftlib_parameter_count", None) is None:
            self._ftlib_parameter_count = self.model.num_parameters(exclude_embeddings=True)
        input_ids = inputs.get("input_ids")
        return 6 * input_ids.numel() * self._ftlib_parameter_count if input_ids is not None else 0

    def training_step(self, model, inputs, num_items_in_batch=None):
        # transformers calls model.train() before every micro-batch: one more walk over every module (thousands
        # for an 8B model with adapters). Once this trainer has switched the model to training mode, the
        # call is skipped while the model stays in it (evaluation switches it to eval mode, so the first
        # micro-batch after an evaluation switches it back). A fresh PeftModel says training while its base
        # model is in eval mode, hence the first real call.
        if not (model.training and getattr(self, "_ftlib_switched_to_training", False)):
            self._ftlib_switched_to_training = True
            return super().training_step(model, inputs, num_items_in_batch)
        model.train = functools.partial(_train_unless_training, model)  # shadows nn.Module.train, this call only
        try:
            return super().training_step(model, inputs, num_items_in_batch)
        finally:
            del model.train


def _loss_on_labelled_positions(model, inputs, num_items_in_batch):
    """The model's own causal-LM loss, with output-layer logits computed only where a label is learned.

    Response-only training takes the loss on a few answer tokens per row, yet the model computes logits,
    a (batch, length, vocabulary) tensor, at every position: for a 135M model with a 49,152-word vocabulary
    that output layer is about a fifth of the work, nearly all of it for positions whose loss is ignored.
    Positions where no row learns the next token are left out (`logits_to_keep` with their indices), and
    the loss is transformers' own function on the rest, so the loss and the gradients are the same.
    Returns None where this does not apply (no learned token, or a model without `logits_to_keep`).
    """
    from transformers.loss.loss_utils import ForCausalLMLoss

    next_labels = torch.nn.functional.pad(inputs["labels"], (0, 1), value=-100)[:, 1:]
    keep = (next_labels != -100).any(dim=0).nonzero().flatten()
    if keep.numel() == 0 or not _accepts_logits_to_keep(model):
        return None
    outputs = model(**{name: value for name, value in inputs.items() if name != "labels"}, logits_to_keep=keep)
    logits = outputs.logits
    return ForCausalLMLoss(logits, None, logits.shape[-1], num_items_in_batch, shift_labels=next_labels[:, keep])


@functools.cache
def _forward_takes_logits_to_keep(model_class):
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


def _accepts_logits_to_keep(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _forward_takes_logits_to_keep(type(base))


def _train_unless_training(model, mode=True):
    """model.train(mode), skipped when it would not change the model's mode."""
    if mode and model.training:
        return model
    return type(model).train(model, mode)


class HistoryCallback(TrainerCallback):
    """Copies every logged loss into the history as it happens (so an interrupted run keeps it)."""

    def __init__(self, history):
        self.history = history

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.history.record(logs or {}, state.global_step, state.epoch)


class ProgressCallback(TrainerCallback):
    """Prints `step 30/60  loss 1.234  held-out 1.301  12 s, about 12 s left` about ten times a run."""

    def __init__(self, history):
        self.history = history
        self.started = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        every = max(1, state.max_steps // 10)
        if "loss" not in logs or (state.global_step % every and state.global_step != state.max_steps):
            return
        elapsed = time.perf_counter() - self.started
        left = elapsed / max(state.global_step, 1) * (state.max_steps - state.global_step)
        held_out = f"  held-out {self.history.eval_loss[-1]:.3f}" if self.history.eval_loss else ""
        print(f"step {state.global_step}/{state.max_steps}  loss {float(logs['loss']):.3f}{held_out}  "
              f"{elapsed:.0f} s, about {left:.0f} s left", flush=True)


@contextmanager
def quiet_dataset_preparation():
    """Hide the progress bars of TRL's checks over data that format_dataset already tokenized and cut."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def keep_adapters_out_of_bfloat16(model):
    """Put trainable bf16 weights back in float32, for float16 training; returns how many were changed.

    Example: `keep_adapters_out_of_bfloat16(model)  # after building TRL's trainer on a T4`

    TRL 1.15's SFTTrainer turns a quantised model's LoRA weights into bf16, whatever the compute dtype. A
    float16 run (a T4 has no bf16) then fails at its first optimizer step, because the float16 loss scaler
    cannot unscale bf16 gradients; float32 adapters are what PEFT makes and what the scaler expects.
    """
    changed = 0
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype == torch.bfloat16:
            parameter.data = parameter.data.float()
            changed += 1
    return changed
