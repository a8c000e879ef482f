"""Step 6 of the guide: train, on TRL's SFTTrainer (or another method's trainer), and keep a history a plot or a
diagnosis can read."""

import math
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers.trainer_callback import PrinterCallback

from ftlib.checks import (check_choice, check_flag, check_positive, check_range, check_tokenizer, describe_weights,
                          non_finite_weights)
from ftlib.data import ensure_formatted
from ftlib.errors import FtlibError, FtlibPermissionError
from ftlib.speed import acceleration, memory_budget
from ftlib.speed.offloaded_checkpoint import release_return_buffers
from ftlib.training import distributed, safety
from ftlib.training.devices import train_on_one_gpu
from ftlib.training.history import TrainingHistory
from ftlib.training.methods import METHOD_NAMES, Method
from ftlib.training.trainer import (FtlibTrainer, HistoryCallback, ProgressCallback, keep_adapters_out_of_bfloat16,
                                    quiet_dataset_preparation)

DEFAULT_MAX_STEPS = 60  # the guide's quick first run


def train(
    model,
    tokenizer,
    dataset,
    *,
    method="sft",  # "sft" | "dpo" | "orpo" | "kto" | "pretrain" | "grpo": what the model learns from (see below)
    per_device_train_batch_size=2,  # 1-8: larger is faster per example but needs more memory
    gradient_accumulation_steps=4,  # effective batch = 2 x 4 = 8; raise it instead of the batch when memory is short
    max_steps=None,  # optimizer steps; None = 60, a quick first run (or num_train_epochs decides)
    num_train_epochs=None,  # 1-3 passes over the data instead of max_steps; more risks over-fitting
    learning_rate=2e-4,  # 2e-4 for LoRA; 1e-4 to 5e-5 is gentler and suits longer runs and full fine-tuning
    warmup_steps=5,  # steps of linearly rising learning rate at the start: steadies the first updates
    lr_scheduler_type="linear",  # "linear" decays to 0; "cosine" decays smoothly; "constant" never does
    weight_decay=0.01,  # 0-0.1: a mild pull of weights toward 0 against over-fitting
    max_seq_length=None,  # None = the tokenizer's model_max_length (load_model's max_seq_length)
    eval_dataset=None,  # held-out examples: their loss shows over-fitting that training loss hides
    eval_steps=None,  # with held-out data: evaluate every this many steps; None = about 10 times a run
    logging_steps=1,  # log the training loss every step: the live plot and the history use it
    output_dir="outputs",  # checkpoint-N folders go here when save_steps is set (checked writable first); nothing else
    save_steps=None,  # save a checkpoint every this many steps so a stopped run can resume (early stopping
    # saves one at each evaluation by itself)
    resume=False,  # True continues from the last checkpoint in output_dir
    early_stopping_patience=None,  # stop after this many evaluations without a better held-out loss
    seed=3407,  # same seed, same data order and dropout: runs repeat
    callbacks=None,  # extra transformers TrainerCallbacks, e.g. the notebooks' live loss plot
    optim=None,  # None = 8-bit AdamW on a GPU, AdamW on the CPU
    memory_budget_gb=None,  # GB of GPU memory training may use; None = what the GPU has free (on a CPU: every layer
    # recomputed, no plan). With add_lora's "auto", as few layers are recomputed as fit it less 10%: more speed the
    # more memory (ftlib/speed/memory_budget.py); a forced mode that exceeds it is refused
    verbose=True,  # print a progress line about ten times a run (skipped when a callback shows progress itself)
    fsdp=None,  # several processes only (torchrun, ftlib.launch): True shards weights, gradients and optimizer state
    # over the GPUs (FSDP2), for a model one GPU cannot hold; None = DDP, a whole copy per GPU (faster when it fits)
    beta=None,  # dpo/orpo/kto only. None = 0.1 (TRL's default for all three); 0.01-0.5: higher keeps the model closer
    # to where it started (DPO, KTO) or weighs the preference more against plain SFT (ORPO). grpo: None = 0.04,
    # the KL pull toward the adapters as they started; 0.0 = no reference pass (faster, nothing stops drifting)
    embedding_learning_rate=None,  # pretrain only: the rate for trainable embeddings and output head, e.g. 1/10
    # of learning_rate (they move every token's meaning, so they are kept gentler); None = the same rate
    reward_functions=None,  # grpo only, and needed there: functions scoring completions, e.g. [format_reward,
    # exact_answer_reward] from ftlib.training.rewards; GRPO adds their scores up
    num_generations=None,  # grpo only. None = 8 completions per prompt (4-16: a steadier group mean, more
    # generation time); it must divide per_device_train_batch_size x gradient_accumulation_steps
    max_completion_length=None,  # grpo only. None = 256 tokens (64-1024): room to reason; step time grows with it
    temperature=None,  # grpo only. None = 1.0 (TRL's); 0.5-1.0: lower samples nearer the greedy answer (a small or
    # barely warmed-up model writes noise at 1.0), higher gives a group more variety to compare
):
    """Fine-tune `model` on `dataset` and return the loss history.

    `dataset` is what `format_dataset` returned (a DatasetDict's "test" split becomes the held-out set),
    or raw rows, which are formatted first. `method` picks what is learned: "sft" supervised answers;
    "dpo", "orpo" preference pairs (prompt/chosen/rejected); "kto" single answers marked good or bad
    (prompt/completion/label); "pretrain" raw text (a "text" column, packed into max_seq_length blocks);
    "grpo" prompts ({"question": ..., "answer": ...}) whose generated completions reward_functions score;
    see ftlib/training/preference.py, pretraining.py and grpo.py. Learning rates for preference methods: 5e-7 to
    5e-6 on a full model (a preference only nudges a model that already answers), 5e-6 to 2e-4 for LoRA
    (adapters start at zero and move less per step). The model learns in place; afterwards it is in eval mode.
    Every setting, the output folder and the model (adapters present, no NaN or inf in its weights) are
    checked before any weight changes; a step that turns the loss, gradients or weights NaN or infinite
    stops the run with the last good weights put back (see ftlib/training/safety.py).

    Example:
        >>> history = train(model, tokenizer, format_dataset(rows, tokenizer), max_steps=60)
        >>> history.final_loss
        0.52
    """
    max_steps = _steps(max_steps, num_train_epochs)
    check_choice("method", method, METHOD_NAMES, "'sft' (supervised answers), 'dpo' (preference pairs)")
    method = plug_in(method)
    options = _method_options(method, beta=beta, embedding_learning_rate=embedding_learning_rate,
                              reward_functions=reward_functions, num_generations=num_generations,
                              max_completion_length=max_completion_length, temperature=temperature)
    _check_settings(per_device_train_batch_size, gradient_accumulation_steps, max_steps, num_train_epochs,
                    learning_rate, warmup_steps, save_steps, eval_steps, early_stopping_patience)
    _check_more_settings(max_seq_length, logging_steps, lr_scheduler_type, weight_decay, optim, seed, output_dir,
                         resume, callbacks, verbose)
    distributed.check_fsdp(fsdp)
    check_tokenizer(tokenizer, "train")
    max_seq_length = max_seq_length or tokenizer.model_max_length
    train_dataset, eval_dataset = method.prepare_datasets(dataset, eval_dataset, tokenizer, max_seq_length)
    _check_model(model)
    _check_evaluation_settings(eval_dataset, eval_steps, save_steps, early_stopping_patience)
    memory_plan = memory_budget.plan_training(  # which layers to recompute: before any weight changes
        model, [train_dataset], per_device_train_batch_size=per_device_train_batch_size, max_seq_length=max_seq_length,
        optim=optim, memory_budget_gb=memory_budget_gb, verbose=verbose)
    checkpoint = _checkpoint_to_resume(output_dir) if resume else None
    by_epochs = num_train_epochs is not None
    total_steps = _planned_steps(len(train_dataset), per_device_train_batch_size, gradient_accumulation_steps,
                                 num_train_epochs) if by_epochs else max_steps
    if eval_dataset is not None and eval_steps is None:
        eval_steps = max(1, total_steps // 10)
    if early_stopping_patience is not None:
        save_steps = eval_steps  # the best checkpoint can only be kept if one is saved at each evaluation
    stopper, stopping_settings = (safety.early_stopping(early_stopping_patience)
                                  if early_stopping_patience is not None else (None, {}))
    # Checkpoints go to output_dir, checked writable now, before any weight changes; a run without them
    # gives the trainer a scratch folder, so nothing appears where the user did not ask for it.
    checkpointing = bool(save_steps)
    trainer_dir = _check_output_dir(output_dir) if checkpointing else tempfile.mkdtemp(prefix="ftlib-train-")
    if checkpointing and verbose:
        print(f"checkpoints: {trainer_dir.resolve()}{os.sep}checkpoint-N every {save_steps} steps")
    config = _trainer_config(model, dict(
        output_dir=str(trainer_dir), per_device_train_batch_size=per_device_train_batch_size,
        per_device_eval_batch_size=per_device_train_batch_size, gradient_accumulation_steps=gradient_accumulation_steps,
        max_steps=-1 if by_epochs else max_steps, num_train_epochs=num_train_epochs if by_epochs else 1,
        learning_rate=learning_rate, warmup_steps=warmup_steps, lr_scheduler_type=lr_scheduler_type,
        weight_decay=weight_decay, logging_steps=logging_steps, eval_strategy="no" if eval_dataset is None else "steps",
        eval_steps=eval_steps, save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500, seed=seed,
        data_seed=seed, max_length=max_seq_length, optim=optim,
    ) | stopping_settings | method.settings(options, model) | distributed.trainer_settings(model, fsdp), method)
    history = TrainingHistory(memory_plan=memory_plan)
    guard = safety.NonFiniteLossGuard(history=history)
    shows_progress = any(getattr(callback, "shows_progress", False) for callback in callbacks or [])
    all_callbacks = [HistoryCallback(history), guard, *distributed.progress_callbacks_here(callbacks),
                     *([ProgressCallback(history)] if verbose and not shows_progress and distributed.is_main_process()
                       else []),
                     *([stopper] if stopper is not None else [])]
    try:
        if method.speed_note and verbose:
            print(method.speed_note)
        with method.run_context(model):
            with quiet_dataset_preparation(), refused_settings("the trainer"):
                trainer = method.trainer_class()(
                    model=model, args=train_on_one_gpu(config), train_dataset=train_dataset,
                    eval_dataset=eval_dataset, processing_class=tokenizer, callbacks=all_callbacks,
                    **method.trainer_keywords(model, options))
            _run(trainer, model, history, checkpoint, [train_dataset, eval_dataset], max_seq_length, output_dir)
    finally:
        method.finish(model)
        if not checkpointing:
            shutil.rmtree(trainer_dir, ignore_errors=True)
    if guard.triggered:
        print(guard.message)
    elif history.stopped_reason == "finished" and safety.stopped_early(stopper, trainer.state):
        history.stopped_reason = safety.STOPPED_EARLY
    if history.eval_loss:
        history.best_step = history.eval_steps[history.eval_loss.index(min(history.eval_loss))]
    model.ftlib_training = {
        "method": method.name,
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


def plug_in(name):
    """The Method (ftlib/training/methods.py) that runs train(method=name): a new method adds one line here.

    Example: `plug_in("dpo").config_class()  # trl.DPOConfig`
    """
    from ftlib.training import grpo, preference, pretraining

    methods = {
        "sft": Method("sft", config_class=_sft_config_class, trainer_class=lambda: FtlibTrainer,
                      prepare_datasets=_prepare_datasets),
        "dpo": preference.DPO,
        "orpo": preference.ORPO,
        "kto": preference.KTO,
        "pretrain": pretraining.PRETRAIN,
        "grpo": grpo.GRPO,
    }
    if name not in methods:
        raise FtlibError(f"method={name!r} is not available in this version of ftlib: use one of {sorted(methods)}")
    return methods[name]


def _sft_config_class():
    from trl import SFTConfig

    return SFTConfig


def _method_options(method, **options):
    """The method-only options of train, refusing one set for a method that would ignore it."""
    for name, value in options.items():
        if value is not None and name not in method.options:
            raise FtlibError(f"{name}={value!r} has no effect with method={method.name!r}: leave it out, or pick a "
                             f"method that reads it ({name} is read by {_readers(name)})")
    if method.name != "grpo":  # GRPO checks its own: there beta=0.0 means no reference model
        check_positive("beta", options["beta"], "0.1 (0.01-0.5)", allow_none=True, whole=False)
    check_positive("embedding_learning_rate", options["embedding_learning_rate"], "a tenth of learning_rate, e.g. 2e-5",
                   allow_none=True, whole=False)
    return options


def _readers(option):
    from ftlib.training import grpo, preference, pretraining

    readers = [method.name for method in (preference.DPO, preference.ORPO, preference.KTO, pretraining.PRETRAIN,
                                          grpo.GRPO)
               if option in method.options]
    return " and ".join(repr(name) for name in readers)


def _trainer_config(model, choices, method):
    """The method's TRL config: the user's choices, the settings every ftlib run shares, then the speed options."""
    device = next(model.parameters()).device
    model_dtype = _compute_dtype(model)
    settings = dict(
        choices,
        bf16=device.type == "cuda" and model_dtype == torch.bfloat16,
        fp16=device.type == "cuda" and model_dtype == torch.float16,
        **acceleration.trainer_checkpointing_off(),  # add_lora already set it up the way the user chose
        report_to="none",
        disable_tqdm=True,  # the history, the notebooks' live plot and our own progress line report instead
        dataloader_num_workers=0,
        logging_nan_inf_filter=False,  # let the NaN guard see a NaN loss instead of an averaged-over one
        dataloader_pin_memory=device.type == "cuda",
    )
    optim = settings.pop("optim", None)
    settings.update(acceleration.trainer_settings(model))  # may replace defaults above (e.g. max_length)
    if optim is not None:
        settings["optim"] = optim
    config_class = method.config_class()
    with refused_settings(f"TRL's {config_class.__name__}"):
        config = config_class(**settings)
    acceleration.fuse_lora(model)
    return config


@contextmanager
def refused_settings(what):
    """Re-raise a ValueError from the trainer's own checks as FtlibError, naming the setting where it can.

    ftlib checks every setting of `train` first; this catches what a newer TRL or transformers refuses beyond
    those checks, so the user still gets an FtlibError with the original chained.
    """
    try:
        yield
    except FtlibError:
        raise
    except (ValueError, TypeError) as error:
        raise FtlibError(
            f"{what} refused these settings ({type(error).__name__}: {str(error)[:400]}): change the train(...) "
            "argument it names, or leave it at its default"
        ) from error


def _run(trainer, model, history, checkpoint, datasets, max_seq_length, output_dir):
    """trainer.train(), keeping the history through an interrupt, turning out-of-memory and full disks into advice."""
    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts; the progress line replaces it
    if trainer.args.fp16:
        keep_adapters_out_of_bfloat16(model)
    model.config.use_cache = False  # the generation cache only costs memory while training
    started = time.perf_counter()
    try:
        tokenized = [dataset for dataset in datasets if dataset is not None and "input_ids" in dataset.column_names]
        with acceleration.attention_suited_to(model, tokenized, max_seq_length), \
                acceleration.dependencies_reading_old_checkpointing_names():
            trainer.train(resume_from_checkpoint=checkpoint)
    except KeyboardInterrupt:
        history.stopped_reason = safety.STOPPED_INTERRUPTED
        saved = trainer.args.save_strategy != "no"
        print(safety.interrupt_message(trainer.state.global_step, trainer.state.max_steps, output_dir,
                                       safety.last_checkpoint(output_dir) if saved else None))
    except Exception as error:
        if distributed.collective_failure(error) is not None:  # another process died or hung
            raise distributed.collective_failure(error) from error
        if safety.is_out_of_memory(error):
            raise safety.out_of_memory_error(error, _memory_settings(model, trainer.args)) from error
        if isinstance(error, OSError):  # a checkpoint could not be written: the disk filled up, say
            history.stopped_reason = "checkpoint_failed"
            failure = (FtlibPermissionError if isinstance(error, PermissionError) else FtlibError)(
                f"writing a checkpoint to {output_dir} failed at step {trainer.state.global_step} "
                f"({type(error).__name__}: {error}): free disk space or pass output_dir= a folder with room, then "
                "train again (resume=True continues from the last checkpoint); the model keeps the weights of step "
                f"{trainer.state.global_step} and error.history holds the losses so far"
            )
            failure.history = history
            raise failure from error
        raise
    finally:
        release_return_buffers()  # offloaded checkpointing's two layer-input buffers, for what comes next
        history.seconds = time.perf_counter() - started
        model.config.use_cache = True
        model.eval()


def _check_output_dir(output_dir):
    """Create `output_dir` if needed and prove it writable, before training: FtlibPermissionError when not."""
    path = Path(output_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise FtlibError(f"output_dir={str(output_dir)!r} is a file, not a folder: pass output_dir= a folder for the "
                         "checkpoints, e.g. 'outputs'")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".ftlib-write-test-"):
            pass
    except PermissionError as error:
        raise FtlibPermissionError(
            f"train cannot write checkpoints to output_dir={str(output_dir)!r} ({error.strerror}): pass output_dir= "
            "a folder you may write to, e.g. one under your home folder, or leave save_steps out to keep no checkpoints"
        ) from error
    except OSError as error:
        raise FtlibError(
            f"train cannot write checkpoints to output_dir={str(output_dir)!r} ({type(error).__name__}: "
            f"{error.strerror or error}): pass output_dir= a folder you may write to, or leave save_steps out"
        ) from error
    return path


def _checkpoint_to_resume(output_dir):
    checkpoint = safety.last_checkpoint(output_dir)
    if checkpoint is None:
        raise FtlibError(
            f"resume=True but {output_dir!r} holds no checkpoint: train with save_steps=... "
            "(and the same output_dir) first, or leave resume=False to start fresh"
        )
    return checkpoint


def _prepare_datasets(dataset, eval_dataset, tokenizer, max_seq_length):
    """The training and held-out token columns; raw rows are formatted first (a "test" split is held out)."""
    from datasets import DatasetDict

    dataset = ensure_formatted(dataset, tokenizer, max_seq_length=max_seq_length, needed=("input_ids",), verbose=True)
    if isinstance(dataset, DatasetDict):
        if "train" not in dataset:
            raise FtlibError(
                f"the DatasetDict has splits {list(dataset)} but no 'train': pass dataset['<name>'] instead"
            )
        if eval_dataset is None and "test" in dataset:
            eval_dataset = dataset["test"]
        dataset = dataset["train"]
    if eval_dataset is not None:
        eval_dataset = _token_columns(ensure_formatted(eval_dataset, tokenizer, max_seq_length=max_seq_length,
                                                       needed=("input_ids",)), "eval_dataset")
    return _token_columns(dataset, "dataset"), eval_dataset


def _token_columns(dataset, name):
    if len(dataset) == 0:
        raise FtlibError(f"{name} is empty: training needs at least one example")
    shape = getattr(dataset, "ftlib_shape", None)
    dataset = dataset.select_columns([column for column in ("input_ids", "labels") if column in dataset.column_names])
    dataset.ftlib_shape = shape
    return dataset


def _steps(max_steps, epochs):
    """max_steps, with the guide's 60 when neither it nor num_train_epochs was chosen; both at once is refused."""
    if max_steps is not None and epochs is not None:
        raise FtlibError(
            f"max_steps={max_steps} and num_train_epochs={epochs} were both set, and one would be ignored: "
            "keep max_steps to train a fixed number of steps, or num_train_epochs to train by passes over the data"
        )
    return DEFAULT_MAX_STEPS if max_steps is None and epochs is None else max_steps


def _check_evaluation_settings(eval_dataset, eval_steps, save_steps, patience):
    """Refuse evaluation settings that this run would ignore."""
    for name, value in (("early_stopping_patience", patience), ("eval_steps", eval_steps)):
        if value is not None and eval_dataset is None:
            raise FtlibError(
                f"{name} needs held-out data to evaluate: pass eval_dataset=..., or "
                "format_dataset(..., test_size=0.2) and train on the DatasetDict it returns"
            )
    if patience is not None and save_steps is not None and save_steps != eval_steps:
        raise FtlibError(
            f"early stopping saves a checkpoint at every evaluation (to keep the best), so save_steps={save_steps} "
            f"would be ignored: leave save_steps out, or set eval_steps={save_steps} to evaluate and save together"
        )


# The learning-rate schedules that run with train's settings alone (others need extra scheduler arguments).
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt")


def _check_more_settings(max_seq_length, logging_steps, scheduler, weight_decay, optim, seed, output_dir, resume,
                         callbacks, verbose):
    check_positive("max_seq_length", max_seq_length, "None (load_model's max_seq_length) or 2048", allow_none=True)
    check_positive("logging_steps", logging_steps, "1 (the loss of every step: the live plot and diagnose read it)")
    check_choice("lr_scheduler_type", scheduler, SCHEDULERS, "'linear' (the default) or 'cosine'")
    check_range("weight_decay", weight_decay, "0.01 (0-0.1 typical)", low=0)
    if optim is not None:
        from transformers.training_args import OptimizerNames

        check_choice("optim", optim, [name.value for name in OptimizerNames],
                     "None (8-bit AdamW on a GPU, AdamW on the CPU), 'adamw_torch' or 'adamw_8bit'")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise FtlibError(f"seed must be a whole number, got {seed!r}: try seed=3407 (any fixed number repeats a run)")
    if not isinstance(output_dir, (str, os.PathLike)) or not str(output_dir).strip():
        raise FtlibError(f"output_dir must be a folder path like 'outputs', got {output_dir!r}")
    check_flag("resume", resume)
    check_flag("verbose", verbose)
    from transformers import TrainerCallback

    if callbacks is not None and (not isinstance(callbacks, (list, tuple)) or not all(
            isinstance(callback, TrainerCallback) or (isinstance(callback, type) and issubclass(callback, TrainerCallback))
            for callback in callbacks)):
        raise FtlibError(
            f"callbacks must be a list of transformers TrainerCallback objects, got {callbacks!r:.120}: e.g. "
            "callbacks=[LiveLossPlot()]; wrap a single callback in a list"
        )


def _check_model(model):
    """Refuse a model that training would harm or could not change, before any weight changes."""
    if not isinstance(model, torch.nn.Module):
        raise FtlibError(f"train needs the model that load_model (and add_lora) returned, got {type(model).__name__}")
    trainable = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    full = bool((getattr(model, "ftlib_settings", None) or {}).get("full_finetuning"))
    if not hasattr(model, "peft_config") and not full:
        total = sum(parameter.numel() for parameter in model.parameters())
        raise FtlibError(
            f"this model has no LoRA adapters and was not loaded with full_finetuning=True, so train would change "
            f"{'all ' if trainable == total else ''}{trainable:,} of its weights in place: call model = add_lora(model) "
            "first to train adapters, or load it with load_model(..., full_finetuning=True) for a full fine-tune "
            "(then a gentler learning_rate, 1e-5 to 5e-5)"
        )
    if trainable == 0:
        raise FtlibError(
            "this model has no trainable weights (every weight is frozen), so training would change nothing: "
            "call model = add_lora(model) on a base model, or load a saved adapter with load_model(folder), "
            "which keeps it trainable"
        )
    broken = non_finite_weights(model)
    if broken:
        raise FtlibError(
            f"the model holds NaN or infinite values before training, in {describe_weights(broken)}; every loss "
            "would be NaN and training cannot repair them: load the model again with load_model (and add_lora), "
            "and if an earlier run made them, train it with a lower learning_rate"
        )


def _check_settings(batch, accumulation, max_steps, epochs, learning_rate, warmup, save_steps, eval_steps, patience):
    check_positive("per_device_train_batch_size", batch, "2 (or 1 if memory is short)")
    check_positive("gradient_accumulation_steps", accumulation, "4 (effective batch = batch size x accumulation)")
    if epochs is None:
        check_positive("max_steps", max_steps, "60, or set num_train_epochs=1 to train by passes over the data")
    else:
        check_positive("num_train_epochs", epochs, "1 to 3", whole=False)
    check_positive("learning_rate", learning_rate, "2e-4 for LoRA (1e-4 to 5e-5 for gentler, longer runs)", whole=False)
    if learning_rate > 10:  # no run trains there, and the optimizer's float32 arithmetic overflows
        raise FtlibError(f"learning_rate={learning_rate:g} is far above any rate that trains (at most 10 is accepted): "
                         "try 2e-4 for LoRA (1e-4 to 5e-5 for gentler, longer runs)")
    check_range("warmup_steps", warmup, "5", low=0, whole=True)
    check_positive("save_steps", save_steps, "50 (a checkpoint every 50 steps)", allow_none=True)
    check_positive("eval_steps", eval_steps, "10, or None to evaluate about 10 times a run", allow_none=True)
    check_positive("early_stopping_patience", patience, "3 evaluations", allow_none=True)


def _planned_steps(examples, batch, accumulation, epochs):
    return max(1, math.ceil(math.ceil(examples / batch) / accumulation * epochs))


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
        "use_gradient_checkpointing": acceleration.gradient_checkpointing_mode(model),
    }
