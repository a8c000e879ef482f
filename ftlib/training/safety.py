"""Training that fails safely: a NaN guard, early stopping, and plain messages for out-of-memory and interrupts.

`train` wires these in; they are public so a custom training loop on `transformers.Trainer` can use them too:

    >>> guard = NonFiniteLossGuard()
    >>> trainer = SFTTrainer(..., callbacks=[guard])   # stops at once when the loss turns NaN/inf
"""

import math
import os

import torch
from transformers import EarlyStoppingCallback, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from ftlib.errors import FtlibError

STOPPED_NON_FINITE = "nan_loss"  # TrainingHistory.stopped_reason when the guard stopped a run
STOPPED_EARLY = "early_stopping"
STOPPED_INTERRUPTED = "interrupted"


def _is_finite(value):
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return True  # not a number at all: nothing to judge


class NonFiniteLossGuard(TrainerCallback):
    """Stop training the moment the loss, the gradients or the weights turn NaN or infinite, and keep the last good weights.

    Checks, every optimizer step:
      - the gradients, just before the optimizer applies them: a NaN loss makes NaN gradients, and one
        such update would overwrite every trained weight with NaN. The guard drops those gradients, so
        the optimizer skips the step. (Not with fp16: there the loss scaler already skips overflowing steps
        on its own, which is normal and not an error.)
      - the trainable weights, just after the update (a finite gradient times a huge learning rate can still
        overflow them). Finite weights are copied as the last good ones; non-finite ones are stopped on.
      - each logged loss, training and held-out (`logging_nan_inf_filter=False` must be set, or `Trainer`
        hides NaN losses by replacing them with an average).
    On any stop the copy is put back, so the model holds the weights of the last step whose weights were
    all finite (`.good_step`, 0 for the weights it started with), whatever turned non-finite and when.

    The copy costs memory the size of the trainable weights (a LoRA adapter's: a few MB to a few hundred);
    it is kept only up to `copy_limit_bytes`, so a full fine-tune of a large model goes without, and then a
    step that made its weights non-finite cannot be undone (the message says so). After a stop, `.triggered`
    is True and `.step`, `.reason` (a short label) and `.message` (what happened, likely causes, fixes)
    describe it; the `history` passed in gets `stopped_reason = "nan_loss"`. The speed switches turn parts
    off (ftlib/speed/switches.py): `nan_guard` the check of the gradients, `nan_restore` the check of the
    weights and their copy (FTLIB_SPEED_OFF=nan_guard,nan_restore); the loss is checked either way.

    Example:
        >>> guard = NonFiniteLossGuard(history=history)
    """

    def __init__(self, history=None, check_gradients=True, copy_limit_bytes=2 * 1024**3):
        self.history = history  # a TrainingHistory to mark, or None
        self.check_gradients = check_gradients  # costs one pass over the trainable gradients per step
        self.copy_limit_bytes = copy_limit_bytes  # largest copy of the trainable weights kept for restoring
        self.triggered = False
        self.step = None
        self.reason = None
        self.message = None
        self.good_step = None  # the step whose weights the copy holds (None: no copy)
        self.restored = False  # whether the weights of good_step were put back on the stop
        self._learning_rate = None
        self._fp16 = False
        self._check_now = check_gradients  # what on_train_begin decided, with the speed switch
        self._weights = []  # the trainable weights, watched after every update
        self._copy = None  # their last good values

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from ftlib.speed.switches import on

        self._learning_rate = args.learning_rate
        self._fp16 = bool(getattr(args, "fp16", False))
        self._check_now = self.check_gradients and on("nan_guard")
        self._weights, self._copy, self.good_step = [], None, None
        if model is None or not on("nan_restore"):
            return
        self._weights = [parameter for parameter in model.parameters() if parameter.requires_grad]
        size = sum(parameter.numel() * parameter.element_size() for parameter in self._weights)
        if self._weights and size <= self.copy_limit_bytes and self._all_finite():
            with torch.no_grad():
                self._copy = [parameter.detach().clone() for parameter in self._weights]
            self.good_step = state.global_step

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if not self._check_now or self._fp16 or optimizer is None or self.triggered:
            return
        gradients = [
            parameter.grad
            for group in optimizer.param_groups
            for parameter in group["params"]
            if parameter.grad is not None
        ]
        if not gradients:
            return
        # One reduction on the device and a single sync, instead of one per tensor.
        all_finite = torch.stack([torch.isfinite(gradient).all() for gradient in gradients]).all()
        if bool(all_finite):
            return
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                parameter.grad = None  # the optimizer skips parameters without a gradient
        self._stop(state.global_step + 1, "the gradients", control)

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.triggered or not self._weights:
            return
        if not self._all_finite():
            self._stop(state.global_step + 1, "the weights", control)
            return
        if self._copy is not None:
            with torch.no_grad():
                torch._foreach_copy_(self._copy, [parameter.detach() for parameter in self._weights])
            self.good_step = state.global_step + 1  # global_step counts this update only after this call

    def on_step_end(self, args, state, control, **kwargs):
        if self.triggered:
            # Log this step so the NaN shows in the history, and never checkpoint a broken run.
            control.should_log = True
            control.should_save = False
            control.should_training_stop = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        for key in ("loss", "eval_loss"):
            if key in logs and not _is_finite(logs[key]):
                if not self.triggered:
                    where = "the training loss" if key == "loss" else "the held-out loss"
                    self._stop(state.global_step, where, control)
                control.should_training_stop = True
                control.should_save = False
        return control

    def _all_finite(self):
        from ftlib.checks import all_finite

        return all_finite(self._weights)

    def _stop(self, step, where, control):
        self.triggered = True
        self.step = step
        self.reason = STOPPED_NON_FINITE
        self.restored = self._restore()
        self.message = non_finite_loss_message(step, where, self._learning_rate, self._fp16,
                                               good_step=self.good_step if self.restored else None,
                                               watched=bool(self._weights))
        control.should_training_stop = True
        control.should_save = False
        if self.history is not None:
            self.history.stopped_reason = STOPPED_NON_FINITE

    def _restore(self):
        """Put the last good weights back; False when there is no copy to put back."""
        if self._copy is None:
            return False
        with torch.no_grad():
            torch._foreach_copy_([parameter.detach() for parameter in self._weights], self._copy)
        return True


def non_finite_loss_message(step, where="the training loss", learning_rate=None, fp16=False, good_step=None,
                            watched=False):
    """The explanation printed when training stops on a NaN/inf loss, gradient or weight.

    `good_step` is the step whose weights the model was given back (0: the weights it started with), or None
    when no copy was kept; `watched` says whether the weights were checked at all.

    Example:
        >>> print(non_finite_loss_message(12, learning_rate=5e-3, good_step=11))
    """
    lines = [f"Training stopped at step {step}: {where} became NaN or infinite, so nothing after it could be learned."]
    if good_step is not None:
        kept = "the weights it started with" if good_step == 0 else f"the weights of step {good_step}"
        lines.append(f"The model was given back {kept}, the last step whose weights were all finite; "
                     "the history shows the losses so far.")
    elif where == "the gradients":
        lines.append(f"The update of step {step} was skipped, so the model keeps the weights it had before it; "
                     "the history shows the losses so far.")
    elif watched:
        lines.append("The model's weights could not be put back (a copy of every trained weight was too large to "
                     "keep): load the model again, or continue from a checkpoint with train(..., resume=True).")
    else:
        lines.append("The weights were not checked (the speed switch nan_restore is off): check them with "
                     "ftlib.checks.non_finite_weights(model) before using the model.")
    lines.append("Likely causes and fixes:")
    if learning_rate is not None:
        lines.append(
            f"  - learning rate too high ({learning_rate:g}): try learning_rate={learning_rate / 10:g} "
            "(LoRA usually trains well between 5e-5 and 2e-4)."
        )
    else:
        lines.append("  - learning rate too high: divide it by 10 (LoRA usually trains well between 5e-5 and 2e-4).")
    if fp16:
        lines.append(
            "  - fp16 overflow: float16 cannot hold numbers above 65,504. Use bf16 where the GPU supports it "
            "(load_model(..., dtype=torch.bfloat16)), or keep fp16 and lower the learning rate."
        )
    else:
        lines.append("  - fp16 overflow (when training in float16): use bf16 where the GPU supports it.")
    lines.append("  - broken examples: an empty answer or every label masked (-100) can make a NaN; check format_dataset's output.")
    return "\n".join(lines)


def early_stopping(patience, threshold=0.0):
    """Early stopping on held-out loss: (callback, extra trainer settings) for `transformers.Trainer`.

    Stops when the held-out loss has not improved for `patience` evaluations in a row and, at the end,
    loads the checkpoint with the lowest held-out loss, so the model you get back is the best one seen,
    not the last. Checkpoints are written at every evaluation (that is how the best one can be reloaded).

    Example:
        >>> callback, settings = early_stopping(patience=3)
        >>> config = SFTConfig(eval_strategy="steps", eval_steps=10, save_steps=10, **settings)
    """
    if not isinstance(patience, int) or isinstance(patience, bool) or patience < 1:
        raise FtlibError(
            f"early_stopping_patience must be a whole number of evaluations, at least 1, got {patience!r}: "
            "try early_stopping_patience=3 (stop after 3 evaluations without improvement)"
        )
    callback = EarlyStoppingCallback(early_stopping_patience=patience, early_stopping_threshold=threshold)
    settings = {
        "load_best_model_at_end": True,  # reload the best checkpoint when training ends
        "metric_for_best_model": "eval_loss",
        "greater_is_better": False,
        "save_strategy": "steps",  # must match eval_strategy for the best checkpoint to exist
    }
    return callback, settings


def stopped_early(callback, state):
    """Whether an EarlyStoppingCallback, not max_steps, ended the run (read after `trainer.train()`).

    Example:
        >>> history.stopped_reason = "early_stopping" if stopped_early(callback, trainer.state) else "finished"
    """
    if callback is None:
        return False
    ran_out_of_patience = callback.early_stopping_patience_counter >= callback.early_stopping_patience
    return ran_out_of_patience and state.global_step < state.max_steps


def last_checkpoint(output_dir):
    """The newest `checkpoint-N` folder in `output_dir`, or None when there is none.

    Example:
        >>> last_checkpoint("outputs")
        'outputs/checkpoint-40'
    """
    if not output_dir or not os.path.isdir(output_dir):
        return None
    return get_last_checkpoint(output_dir)


def interrupt_message(step, max_steps=None, output_dir="outputs", checkpoint=None):
    """What to print when the user stops a training cell: what was kept and how to continue.

    Example:
        >>> print(interrupt_message(23, 60, "outputs", "outputs/checkpoint-20"))
    """
    of_total = f" of {max_steps}" if max_steps else ""
    lines = [
        f"Training interrupted at step {step}{of_total}.",
        "The model keeps everything it learned up to now, and the returned history holds the losses so far:",
        "you can generate, evaluate or save right away.",
    ]
    if checkpoint:
        checkpoint_step = os.path.basename(os.path.normpath(checkpoint)).rsplit("-", 1)[-1]
        lines.append(
            f"To continue from the last checkpoint (step {checkpoint_step}, in {checkpoint}), run the same "
            f"train(...) call again with resume=True and output_dir={output_dir!r}."
        )
    else:
        lines.append(
            "No checkpoint was saved yet, so a new train(...) call starts from step 0 (on top of what the model "
            "has learned). To be able to resume next time, pass save_steps=20 (a checkpoint every 20 steps)."
        )
    return "\n".join(lines)


def is_out_of_memory(error):
    """Whether an exception is a GPU out-of-memory error (torch's own, or a library's RuntimeError saying so).

    Example:
        >>> is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
        True
    """
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "cudaerrormemoryallocation" in text)


def _gigabytes(count):
    return f"{count / 1024**3:.1f} GB"


def memory_figures(device=None):
    """GPU memory facts for a message: total, peak reserved, peak allocated, currently free. {} without CUDA.

    Example:
        >>> memory_figures()["peak_reserved"]
        '11.4 GB'
    """
    if not torch.cuda.is_available():
        return {}
    device = torch.cuda.current_device() if device is None else device
    figures = {
        "gpu": torch.cuda.get_device_name(device),
        "peak_reserved": _gigabytes(torch.cuda.max_memory_reserved(device)),
        "peak_allocated": _gigabytes(torch.cuda.max_memory_allocated(device)),
        "reserved_now": _gigabytes(torch.cuda.memory_reserved(device)),
    }
    try:
        free, total = torch.cuda.mem_get_info(device)
        figures["free"] = _gigabytes(free)
        figures["total"] = _gigabytes(total)
    except RuntimeError:  # some drivers refuse the query right after an OOM
        figures["total"] = _gigabytes(torch.cuda.get_device_properties(device).total_memory)
    return figures


def out_of_memory_message(settings, figures=None):
    """Explain a GPU out-of-memory error with the memory figures and fixes for these exact settings.

    `settings` holds what the run used (any missing key is skipped): per_device_train_batch_size,
    gradient_accumulation_steps, max_seq_length, load_in_4bit, load_in_8bit, full_finetuning,
    use_gradient_checkpointing, model_name, r.

    Example:
        >>> print(out_of_memory_message({"per_device_train_batch_size": 4, "max_seq_length": 2048}))
    """
    figures = memory_figures() if figures is None else figures
    batch_size = settings.get("per_device_train_batch_size")
    accumulation = settings.get("gradient_accumulation_steps") or 1
    sequence_length = settings.get("max_seq_length")
    model_name = settings.get("model_name")

    where = f" training {model_name}" if model_name else ""
    at = f" at batch size {batch_size}" if batch_size else ""
    if sequence_length:
        at += f" and max_seq_length {sequence_length}"
    lines = [f"Out of GPU memory{where}{at}."]
    if figures:
        total = f" of {figures['total']}" if "total" in figures else ""
        lines.append(
            f"GPU {figures.get('gpu', '')}: peak reserved {figures['peak_reserved']}{total}, "
            f"peak allocated {figures['peak_allocated']}, free now {figures.get('free', 'unknown')}."
        )
    lines.append("Try, from the smallest change to the largest:")

    if batch_size and batch_size > 1:
        smaller = max(1, batch_size // 2)
        longer = accumulation * batch_size // smaller
        lines.append(
            f"  - per_device_train_batch_size={smaller} with gradient_accumulation_steps={longer}: "
            f"the same effective batch ({batch_size} x {accumulation} = {smaller} x {longer}), about half the activation memory."
        )
    if sequence_length and sequence_length > 256:
        lines.append(
            f"  - max_seq_length={sequence_length // 2} in load_model: activations grow with sequence length "
            "(check format_dataset's length report first, so you don't cut answers off)."
        )
    checkpointing = settings.get("use_gradient_checkpointing")
    if checkpointing is False:
        lines.append('  - add_lora(..., use_gradient_checkpointing="offload") (the default): recompute activations instead '
                     "of storing them (~25% slower), with each layer's input kept in CPU memory.")
    elif checkpointing is True:
        lines.append('  - add_lora(..., use_gradient_checkpointing="offload"): keep the checkpointed activations in CPU memory.')
    elif checkpointing == "auto":
        lines.append("  - train(..., memory_budget_gb=...) below the GPU's memory, so more layers are recomputed, or "
                     'add_lora(..., use_gradient_checkpointing="offload"): every layer recomputed, inputs in CPU memory.')
    if settings.get("full_finetuning"):
        lines.append("  - LoRA instead of a full fine-tune: load_model(..., full_finetuning=False) then add_lora(model); "
                     "the optimizer then stores state for under 1% of the weights.")
    elif not settings.get("load_in_4bit"):
        lines.append("  - load_model(..., load_in_4bit=True) (QLoRA): the frozen weights take about a quarter of the memory.")
    if settings.get("r") and settings["r"] > 16:
        lines.append(f"  - a smaller LoRA rank: add_lora(..., r=16) instead of r={settings['r']}.")
    lines.append("  - a smaller model (e.g. a 1B-3B one instead of 7B-8B).")
    lines.append("Then free the memory before retrying: restart the runtime, or `import gc; gc.collect(); torch.cuda.empty_cache()`.")
    return "\n".join(lines)


class FtlibOutOfMemoryError(FtlibError, torch.OutOfMemoryError):
    """Out of GPU memory, with the fixes for the run's settings: an FtlibError that is also torch's OutOfMemoryError."""


def out_of_memory_error(error, settings):
    """An FtlibOutOfMemoryError carrying `out_of_memory_message(settings)`; raise it `from error`.

    Keeps the type, so code that catches `torch.OutOfMemoryError` still catches it (and `FtlibError` too).

    Example:
        >>> raise out_of_memory_error(error, settings) from error
    """
    message = out_of_memory_message(settings)
    original = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return FtlibOutOfMemoryError(f"{message}\n(original error: {original})")
