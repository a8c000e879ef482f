"""Step 6 of the guide: train, on TRL's SFTTrainer, and keep a history a plot or a diagnosis can read."""

import functools
import math
import time
from contextlib import contextmanager

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

from ftlib import acceleration, safety
from ftlib.checks import check_positive
from ftlib.errors import FtlibError
from ftlib.history import TrainingHistory
from ftlib.offloaded_checkpoint import release_return_buffers


def train(
    model,
    tokenizer,
    dataset,
    per_device_train_batch_size=2,  # 1-8: larger is faster per example but needs more memory
    gradient_accumulation_steps=4,  # effective batch = 2 x 4 = 8; raise it instead of the batch when memory is short
    max_steps=60,  # optimizer steps; 60 is a quick first run, ignored when num_train_epochs is set
    num_train_epochs=None,  # 1-3 passes over the data; more risks over-fitting
    learning_rate=2e-4,  # 2e-4 for LoRA; 1e-4 to 5e-5 is gentler and suits longer runs and full fine-tuning
    warmup_steps=5,  # steps of linearly rising learning rate at the start: steadies the first updates
    lr_scheduler_type="linear",  # "linear" decays to 0; "cosine" decays smoothly; "constant" never does
    weight_decay=0.01,  # 0-0.1: a mild pull of weights toward 0 against over-fitting
    max_seq_length=None,  # None = the tokenizer's model_max_length (load_model's max_seq_length)
    eval_dataset=None,  # held-out examples: their loss shows over-fitting that training loss hides
    eval_steps=None,  # evaluate every this many steps; None = about 10 times a run
    logging_steps=1,  # log the training loss every step: the live plot and the history use it
    output_dir="outputs",  # checkpoints go here when save_steps is set
    save_steps=None,  # save a checkpoint every this many steps so a stopped run can resume
    resume=False,  # True continues from the last checkpoint in output_dir
    early_stopping_patience=None,  # stop after this many evaluations without a better held-out loss
    seed=3407,  # same seed, same data order and dropout: runs repeat
    callbacks=None,  # extra transformers TrainerCallbacks, e.g. the notebooks' live loss plot
    optim=None,  # None = 8-bit AdamW on a GPU, AdamW on the CPU
    verbose=True,  # print a progress line about ten times a run (skipped when a callback shows progress itself)
):
    """Fine-tune `model` on `dataset` and return the loss history.

    `dataset` is what `format_dataset` returned (a DatasetDict's "test" split becomes the held-out set),
    or raw rows, which are formatted first. The model learns in place; afterwards it is in eval mode.

    Example:
        >>> history = train(model, tokenizer, format_dataset(rows, tokenizer), max_steps=60)
        >>> history.final_loss
        0.52
    """
    _check_settings(
        per_device_train_batch_size, gradient_accumulation_steps, max_steps, num_train_epochs,
        learning_rate, warmup_steps, save_steps, eval_steps, early_stopping_patience,
    )
    max_seq_length = max_seq_length or tokenizer.model_max_length
    train_dataset, eval_dataset = _prepare_datasets(dataset, eval_dataset, tokenizer, max_seq_length)
    if early_stopping_patience is not None and eval_dataset is None:
        raise FtlibError(
            "early_stopping_patience needs held-out data to watch: pass eval_dataset=..., or "
            "format_dataset(..., test_size=0.2) and train on the DatasetDict it returns"
        )

    from trl import SFTConfig

    checkpoint = None
    if resume:
        checkpoint = safety.last_checkpoint(output_dir)
        if checkpoint is None:
            raise FtlibError(
                f"resume=True but {output_dir!r} holds no checkpoint: train with save_steps=... "
                "(and the same output_dir) first, or leave resume=False to start fresh"
            )

    by_epochs = num_train_epochs is not None
    total_steps = _planned_steps(len(train_dataset), per_device_train_batch_size, gradient_accumulation_steps,
                                 num_train_epochs) if by_epochs else max_steps
    if eval_dataset is not None and eval_steps is None:
        eval_steps = max(1, total_steps // 10)
    if early_stopping_patience is not None:
        save_steps = eval_steps  # the best checkpoint can only be kept if one is saved at each evaluation

    device = next(model.parameters()).device
    model_dtype = _compute_dtype(model)
    extra = acceleration.trainer_settings(model)
    acceleration.fuse_lora(model)
    if optim is not None:
        extra["optim"] = optim
    settings = dict(
        output_dir=output_dir,
        per_device_train_batch_size=per_device_train_batch_size,
        per_device_eval_batch_size=per_device_train_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        max_steps=-1 if by_epochs else max_steps,
        num_train_epochs=num_train_epochs if by_epochs else 1,
        learning_rate=learning_rate,
        warmup_steps=warmup_steps,
        lr_scheduler_type=lr_scheduler_type,
        weight_decay=weight_decay,
        logging_steps=logging_steps,
        eval_strategy="steps" if eval_dataset is not None else "no",
        eval_steps=eval_steps,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        seed=seed,
        data_seed=seed,
        bf16=device.type == "cuda" and model_dtype == torch.bfloat16,
        fp16=device.type == "cuda" and model_dtype == torch.float16,
        gradient_checkpointing=False,  # add_lora already set it up the way the user chose
        max_length=max_seq_length,
        report_to="none",
        disable_tqdm=True,  # the history, the notebooks' live plot and our own progress line report instead
        dataloader_num_workers=0,
        logging_nan_inf_filter=False,  # let the NaN guard see a NaN loss instead of an averaged-over one
        dataloader_pin_memory=device.type == "cuda",
    )
    stopper = None
    if early_stopping_patience is not None:
        stopper, stopping_settings = safety.early_stopping(early_stopping_patience)
        settings.update(stopping_settings)
    settings.update(extra)  # the speed options may replace defaults above (e.g. max_length for padding-free)
    config = SFTConfig(**settings)
    history = TrainingHistory()
    guard = safety.NonFiniteLossGuard(history=history)
    all_callbacks = [_HistoryCallback(history), guard, *(callbacks or [])]
    if verbose and not any(getattr(callback, "shows_progress", False) for callback in callbacks or []):
        all_callbacks.append(_ProgressCallback(history))
    if stopper is not None:
        all_callbacks.append(stopper)

    with _quiet_dataset_preparation():
        trainer = _trainer_class()(
            model=model,
            args=config,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            callbacks=all_callbacks,
        )
    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts; the progress line replaces it
    if config.fp16:
        keep_adapters_out_of_bfloat16(model)
    model.config.use_cache = False  # the generation cache only costs memory while training
    started = time.perf_counter()
    try:
        with acceleration.attention_suited_to(model, [train_dataset, eval_dataset], max_seq_length):
            trainer.train(resume_from_checkpoint=checkpoint)
    except KeyboardInterrupt:
        history.stopped_reason = safety.STOPPED_INTERRUPTED
        print(safety.interrupt_message(trainer.state.global_step, trainer.state.max_steps, output_dir,
                                       safety.last_checkpoint(output_dir)))
    except Exception as error:
        if safety.is_out_of_memory(error):
            raise safety.out_of_memory_error(error, _memory_settings(model, config)) from error
        raise
    finally:
        release_return_buffers()  # offloaded checkpointing's two layer-input buffers, for what comes next
        history.seconds = time.perf_counter() - started
        model.config.use_cache = True
        model.eval()
    if guard.triggered:
        print(guard.message)
    elif history.stopped_reason == "finished" and safety.stopped_early(stopper, trainer.state):
        history.stopped_reason = safety.STOPPED_EARLY
    if history.eval_loss:
        history.best_step = history.eval_steps[history.eval_loss.index(min(history.eval_loss))]
    model.ftlib_training = {
        "learning_rate": learning_rate,
        "per_device_train_batch_size": per_device_train_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "max_steps": None if by_epochs else max_steps,
        "num_train_epochs": num_train_epochs,
        "steps_done": trainer.state.global_step,
        "train_examples": len(train_dataset),
        "final_loss": history.final_loss,
        "final_eval_loss": history.final_eval_loss,
        "data_shape": getattr(train_dataset, "ftlib_shape", None) or "",
        "eval_examples": len(eval_dataset) if eval_dataset is not None else 0,
        "seconds": round(history.seconds, 1),
        "stopped_reason": history.stopped_reason,
    }
    return history


class _HistoryCallback(TrainerCallback):
    """Copies every logged loss into the history as it happens (so an interrupted run keeps it)."""

    def __init__(self, history):
        self.history = history

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.history.record(logs or {}, state.global_step, state.epoch)


class _ProgressCallback(TrainerCallback):
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
def _quiet_dataset_preparation():
    """Hide the progress bars of TRL's checks over data that format_dataset already tokenized and cut."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def _trainer_class():
    """TRL's SFTTrainer, with the model's own loss where TRL's fused loss head cannot run.

    TRL 1.15 computes the loss with a Triton kernel, which needs a GPU; on a CPU (and where Triton is
    missing) the model's own cross-entropy gives the same loss. The FLOP count for the logs is computed
    from a parameter count taken once instead of once per micro-batch.
    """
    from transformers import Trainer
    from trl import SFTTrainer
    from trl.trainer import utils as trl_utils

    class FtlibTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            on_gpu = inputs["input_ids"].device.type in ("cuda", "xpu")
            if on_gpu and getattr(trl_utils, "_ChunkedLogProbFunction", None) is not None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

        def floating_point_ops(self, inputs):
            # transformers recounts the parameters for every micro-batch, a walk over every module (thousands
            # for an 8B model with adapters); the count cannot change during training, so take it once.
            if getattr(self, "_ftlib_parameter_count", None) is None:
                self._ftlib_parameter_count = self.model.num_parameters(exclude_embeddings=True)
            input_ids = inputs.get("input_ids")
            return 6 * input_ids.numel() * self._ftlib_parameter_count if input_ids is not None else 0

        def training_step(self, model, inputs, num_items_in_batch=None):
            # transformers calls model.train() before every micro-batch: one more walk over every module, about
            # 30 ms for an 8B model with adapters. Once this trainer has switched the model to training mode, the
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

    return FtlibTrainer


def _train_unless_training(model, mode=True):
    """model.train(mode), skipped when it would not change the model's mode."""
    if mode and model.training:
        return model
    return type(model).train(model, mode)


def _prepare_datasets(dataset, eval_dataset, tokenizer, max_seq_length):
    from datasets import DatasetDict

    if isinstance(dataset, DatasetDict):
        if "train" not in dataset:
            raise FtlibError(
                f"the DatasetDict has splits {list(dataset)} but no 'train': pass dataset['<name>'] instead"
            )
        if eval_dataset is None and "test" in dataset:
            eval_dataset = dataset["test"]
        dataset = dataset["train"]
    train_dataset = _tokenized(dataset, tokenizer, max_seq_length, "dataset")
    if eval_dataset is not None:
        eval_dataset = _tokenized(eval_dataset, tokenizer, max_seq_length, "eval_dataset")
    return train_dataset, eval_dataset


def _tokenized(dataset, tokenizer, max_seq_length, name):
    from datasets import Dataset

    if isinstance(dataset, Dataset) and "input_ids" in dataset.column_names:
        if len(dataset) == 0:
            raise FtlibError(f"{name} is empty: training needs at least one example")
        shape = getattr(dataset, "ftlib_shape", None)
        keep = [column for column in ("input_ids", "labels") if column in dataset.column_names]
        dataset = dataset.select_columns(keep)
        dataset.ftlib_shape = shape
        return dataset
    from ftlib.data import format_dataset

    return _tokenized(format_dataset(dataset, tokenizer, max_seq_length=max_seq_length), tokenizer,
                      max_seq_length, name)


def _check_settings(batch, accumulation, max_steps, epochs, learning_rate, warmup, save_steps, eval_steps, patience):
    check_positive("per_device_train_batch_size", batch, "2 (or 1 if memory is short)")
    check_positive("gradient_accumulation_steps", accumulation, "4 (effective batch = batch size x accumulation)")
    if epochs is None:
        check_positive("max_steps", max_steps, "60, or set num_train_epochs=1 to train by passes over the data")
    else:
        check_positive("num_train_epochs", epochs, "1 to 3", whole=False)
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)) or not learning_rate > 0 \
            or math.isinf(learning_rate):
        raise FtlibError(
            f"learning_rate must be a positive number, got {learning_rate!r}: try 2e-4 for LoRA "
            "(1e-4 to 5e-5 for gentler, longer runs)"
        )
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise FtlibError(f"warmup_steps must be a whole number of at least 0, got {warmup!r}: try 5")
    check_positive("save_steps", save_steps, "50 (a checkpoint every 50 steps)", allow_none=True)
    check_positive("eval_steps", eval_steps, "10, or None to evaluate about 10 times a run", allow_none=True)
    check_positive("early_stopping_patience", patience, "3 evaluations", allow_none=True)


def _planned_steps(examples, batch, accumulation, epochs):
    return max(1, math.ceil(math.ceil(examples / batch) / accumulation * epochs))


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


def _compute_dtype(model):
    for parameter in model.parameters():
        if parameter.dtype in (torch.float16, torch.bfloat16, torch.float32):
            return parameter.dtype
    return torch.float32


def _memory_settings(model, config):
    """What the out-of-memory advice needs to know about this run."""
    settings = dict(getattr(model, "ftlib_settings", {}))
    lora = settings.pop("lora", {})
    return {
        **settings,
        "r": lora.get("r"),
        "per_device_train_batch_size": config.per_device_train_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "gradient_checkpointing": acceleration.gradient_checkpointing_mode(model),
    }
