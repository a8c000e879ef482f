"""How a training method plugs into `train`: its TRL config and trainer, and how its data is prepared.

`train` does everything the methods share (the setting checks, the model check, the NaN guard, the history
and progress callbacks, the output folder, the run itself); a method brings only what differs. A new method
is one `Method(...)` in its own module (ftlib/training/preference.py, pretraining.py, ...) and one line in
`ftlib.training.run.plug_in`.
"""

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

# Every name train(method=...) accepts; "grpo" is plugged in by ftlib/training/grpo.py.
METHOD_NAMES = ("sft", "dpo", "orpo", "kto", "pretrain", "grpo")


def _nothing(*args, **kwargs):
    return {}


def _no_context(model):
    return nullcontext()


@dataclass(frozen=True)
class Method:
    """One training method, as `train` runs it.

    Example:
        >>> Method("dpo", config_class=lambda: DPOConfig, trainer_class=lambda: DPOTrainer,
        ...        prepare_datasets=prepare_preference_datasets, options=("beta",))
    """

    name: str
    config_class: Callable[[], type]  # imported when used: some live in trl.experimental, slow to import
    trainer_class: Callable[[], type]
    # (dataset, eval_dataset, tokenizer, max_seq_length) -> (train_dataset, eval_dataset or None), checked rows
    prepare_datasets: Callable
    options: tuple = ()  # the train(...) options this method reads, e.g. ("beta",); others must stay None
    settings: Callable = _nothing  # (options dict, model) -> the method's own config fields, e.g. {"beta": 0.1}
    trainer_keywords: Callable = _nothing  # (model, options) -> extra keywords for its trainer
    finish: Callable = _nothing  # (model) -> None: put the model back as the user had it after training
    run_context: Callable = _no_context  # (model) -> context manager around building the trainer and training
    speed_note: str = ""  # the ftlib speed defaults this method switches off, printed by train
    main_metrics: tuple = field(default=())  # what the live plot draws beside the loss, e.g. ("rewards/margins",)
