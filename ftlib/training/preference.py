"""Preference tuning: DPO, ORPO and KTO, as `train(..., method="dpo" | "orpo" | "kto")` runs them.

Where each trainer lives in TRL 1.15 (pyproject allows trl>=1.15,<2):
  DPO: trl.DPOTrainer / trl.DPOConfig (trl/trainer/dpo_trainer.py)
  KTO: trl.KTOTrainer / trl.KTOConfig (trl/trainer/kto_trainer.py; trl.experimental.kto re-exports it)
  ORPO: trl.experimental.orpo.ORPOTrainer / ORPOConfig (only in trl.experimental)

The reference model of DPO and KTO: with a LoRA model and ref_model=None, TRL computes the reference
log-probabilities on the same model, through a frozen copy of the adapter named "ref" (a few MB; the base
weights are shared, never copied), so the reference is the model as it was when training began. `finish`
removes that copy afterwards, so a saved adapter holds only the trained one and a second run can start
again. A full fine-tune (no adapters) would need a second copy of the whole model; instead ftlib asks TRL
to compute the reference log-probabilities once, before the first step (precompute_ref_log_probs=True),
with the model itself, so no copy is kept in memory. ORPO needs no reference model at all.

Speed defaults: fused LoRA and the NF4 kernel keep working (they are the model's own forward); the
labelled-logits loss belongs to ftlib's SFT trainer, so it is off here (these trainers compute
their own log-probabilities on every completion token).
"""

import math
import os
from contextlib import contextmanager

import torch

from ftlib.errors import FtlibError
from ftlib.training.log_probabilities import plain_log_probabilities_off_gpu
from ftlib.training.methods import Method

PAIR_COLUMNS = ("prompt", "chosen", "rejected")
KTO_COLUMNS = ("prompt", "completion", "label")

SPEED_NOTE = ("{name}: ftlib's labelled-logits loss is off (TRL's {trainer} computes its own log-probabilities); "
              "fused LoRA, the NF4 kernel and gradient checkpointing are unchanged")


def prepare_pairs(dataset, eval_dataset, tokenizer, max_seq_length):
    """Train and held-out preference pairs (prompt/chosen/rejected) for DPO and ORPO, every row checked.

    Example: `prepare_pairs({"train": rows, "test": held_out}, None, tokenizer, 512)`
    """
    return _prepare(dataset, eval_dataset, PAIR_COLUMNS)


def prepare_kto(dataset, eval_dataset, tokenizer, max_seq_length):
    """Train and held-out KTO rows (prompt/completion/label), every row checked.

    Example: `prepare_kto(rows, None, tokenizer, 512)`
    """
    return _prepare(dataset, eval_dataset, KTO_COLUMNS)


def _prepare(dataset, eval_dataset, columns):
    from datasets import Dataset, DatasetDict

    if isinstance(dataset, (dict, DatasetDict)) and not _looks_like_columns(dataset):
        if "train" not in dataset:
            raise FtlibError(f"the dataset has splits {list(dataset)} but no 'train': pass dataset['<name>'] instead")
        if eval_dataset is None and "test" in dataset:
            eval_dataset = dataset["test"]
        dataset = dataset["train"]
    prepared = [Dataset.from_list(check_preference_rows(rows, columns, name))
                if rows is not None else None
                for rows, name in ((dataset, "dataset"), (eval_dataset, "eval_dataset"))]
    for rows in prepared:
        if rows is not None:
            rows.ftlib_shape = "preference pairs" if columns == PAIR_COLUMNS else "kto"
    return prepared[0], prepared[1]


def _looks_like_columns(dataset):
    """A plain dict of columns ({"prompt": [...], ...}) rather than of splits."""
    return isinstance(dataset, dict) and "prompt" in dataset


def check_preference_rows(rows, columns=PAIR_COLUMNS, name="dataset"):
    """The rows as a list of dicts with only `columns`, or an FtlibError naming the first bad row and the fix.

    Example:
        >>> check_preference_rows([{"prompt": "2+2?", "chosen": "4", "rejected": "5"}])
        [{'prompt': '2+2?', 'chosen': '4', 'rejected': '5'}]
    """
    rows = _as_rows(rows, name)
    if not rows:
        raise FtlibError(f"{name} is empty: preference training needs at least one row")
    checked = []
    for number, row in enumerate(rows):
        missing = [column for column in columns if column not in row]
        if missing:
            raise FtlibError(
                f"{name} row {number} has columns {sorted(row)} but not {missing}: "
                f"{_shape_hint(columns)}")
        for column in columns:
            if column == "label":
                _check_label(row[column], number, name)
            elif _is_empty(row[column]):
                raise FtlibError(f"{name} row {number}: {column} is empty ({row[column]!r}): every {column} needs "
                                 f"text (a string, or a list of chat messages); drop the row or fill it in")
        if "chosen" in columns and _text_of(row["chosen"]) == _text_of(row["rejected"]):
            raise FtlibError(f"{name} row {number}: chosen and rejected are the same ({_short(row['chosen'])}), so "
                             "there is nothing to prefer: fix the row (the rejected answer should be a worse one) or "
                             "drop it")
        checked.append({column: row[column] for column in columns})
    return checked


def _as_rows(rows, name):
    from datasets import Dataset

    if isinstance(rows, Dataset):
        return rows.to_list()
    if isinstance(rows, dict):
        lengths = {len(values) for values in rows.values()}
        if len(lengths) > 1:
            raise FtlibError(f"{name}'s columns have different lengths: every column needs one value per row")
        return [dict(zip(rows, values)) for values in zip(*rows.values())]
    if isinstance(rows, (list, tuple)) and all(isinstance(row, dict) for row in rows):
        return list(rows)
    raise FtlibError(f"{name} must be a list of dicts, a datasets.Dataset or a DatasetDict with a 'train' split, got "
                     f"{type(rows).__name__}")


def _shape_hint(columns):
    if "label" in columns:
        return ("KTO needs prompt, completion and label (True for a good completion, False for a bad one), "
                "e.g. {'prompt': 'Is 2+2 4?', 'completion': 'Yes.', 'label': True}")
    return ("DPO and ORPO need prompt, chosen and rejected, e.g. {'prompt': 'Is 2+2 4?', 'chosen': 'Yes.', "
            "'rejected': 'No.'}; rename your columns with dataset.rename_column")


def _check_label(label, number, name):
    if not isinstance(label, bool):
        raise FtlibError(f"{name} row {number}: label is {label!r}, not True or False: KTO's label says whether the "
                         "completion is desirable (True) or undesirable (False); convert it, e.g. label == 'good'")


def _is_empty(value):
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, list):
        return not value or all(not str(message.get("content", "")).strip() for message in value
                                if isinstance(message, dict))
    return value is None


def _text_of(value):
    if isinstance(value, list):
        return [(message.get("role"), str(message.get("content", "")).strip()) for message in value]
    return str(value).strip()


def _short(value):
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# Trainer classes, imported when used (trl.experimental is slow to import and prints a warning) -------------------

def _dpo_classes():
    from trl import DPOConfig, DPOTrainer  # trl/trainer/dpo_trainer.py

    return DPOConfig, DPOTrainer


def _orpo_classes():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "experimental" warning: the trainer is TRL's, only its place may move
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer  # only in trl.experimental in TRL 1.15

    return ORPOConfig, ORPOTrainer


def _kto_classes():
    from trl import KTOConfig, KTOTrainer  # trl/trainer/kto_trainer.py

    return KTOConfig, KTOTrainer


def _reference_keywords(model, options):
    """ref_model=None: with adapters TRL uses a frozen copy of them on the same base (see the module docstring)."""
    return {"ref_model": None}


def _drop_reference_adapter(model):
    """Remove TRL's frozen "ref" adapter copy and make the trained adapter the active one again."""
    if hasattr(model, "peft_config") and "ref" in model.peft_config:
        active = [name for name in model.peft_config if name != "ref"]
        model.delete_adapter("ref")
        if active and model.active_adapter not in model.peft_config:
            model.set_adapter(active[0])


@contextmanager
def _while_training(model):
    """TRL's own log-probabilities made to run on a CPU, and its reference-precompute progress bar hidden (train
    reports progress through the history, the live plot and its own line)."""
    hidden = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        with plain_log_probabilities_off_gpu(model):
            yield
    finally:
        if hidden is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = hidden


def _beta(options, model):
    return {"beta": options["beta"]} if options.get("beta") is not None else {}


def _orpo_settings(options, model):
    """beta, and the prompt/chosen/rejected columns kept for ORPO's collator (TRL would switch it itself, warning)."""
    return _beta(options, model) | {"remove_unused_columns": False}


def _reference_settings(options, model):
    """beta, and for a full fine-tune the reference log-probabilities computed once up front (no model copy).

    Runs before training starts, so a model that already holds an adapter named "ref" (which `finish` would
    remove afterwards) is refused while nothing has changed.
    """
    if hasattr(model, "peft_config") and "ref" in model.peft_config:
        raise FtlibError("the model already holds an adapter named 'ref', the name TRL gives the frozen reference "
                         "copy: rename or delete it (model.delete_adapter('ref')) before preference training")
    return _beta(options, model) | ({} if hasattr(model, "peft_config") else {"precompute_ref_log_probs": True})


DPO = Method(
    "dpo", config_class=lambda: _dpo_classes()[0], trainer_class=lambda: _dpo_classes()[1],
    prepare_datasets=prepare_pairs, options=("beta",), settings=_reference_settings,
    trainer_keywords=_reference_keywords,
    finish=_drop_reference_adapter, run_context=_while_training,
    speed_note=SPEED_NOTE.format(name="DPO", trainer="DPOTrainer"),
    main_metrics=("rewards/margins", "rewards/accuracies"),
)
ORPO = Method(
    "orpo", config_class=lambda: _orpo_classes()[0], trainer_class=lambda: _orpo_classes()[1],
    prepare_datasets=prepare_pairs, options=("beta",), settings=_orpo_settings,
    run_context=_while_training, speed_note=SPEED_NOTE.format(name="ORPO", trainer="ORPOTrainer"),
    main_metrics=("rewards/margins", "log_odds_ratio"),
)
KTO = Method(
    "kto", config_class=lambda: _kto_classes()[0], trainer_class=lambda: _kto_classes()[1],
    prepare_datasets=prepare_kto, options=("beta",), settings=_reference_settings,
    trainer_keywords=_reference_keywords,
    finish=_drop_reference_adapter, run_context=_while_training,
    speed_note=SPEED_NOTE.format(name="KTO", trainer="KTOTrainer"),
    main_metrics=("rewards/margins", "kl"),
)


def completion_log_probability(model, tokenizer, prompt, completion):
    """The summed log-probability the model gives `completion` after `prompt` (chat messages or strings).

    Example: `completion_log_probability(model, tokenizer, "Is 2+2 4?", "Yes.")  # e.g. -3.2`
    """
    prompt_ids, full_ids = _prompt_and_full_ids(tokenizer, prompt, completion)
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([full_ids], device=device)).logits[0].float()
    log_probs = torch.log_softmax(logits[:-1], dim=-1)
    targets = torch.tensor(full_ids[1:], device=device)
    per_token = log_probs.gather(1, targets[:, None])[:, 0]
    return float(per_token[len(prompt_ids) - 1:].sum())


def _prompt_and_full_ids(tokenizer, prompt, completion):
    if isinstance(prompt, list):
        prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        full_text = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    else:
        prompt_text, full_text = prompt, prompt + completion
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    if full_ids[:len(prompt_ids)] != prompt_ids:
        raise FtlibError("the prompt's tokens change when the completion follows it, so the completion's "
                         "log-probability is not defined: end the prompt with a space or newline")
    return prompt_ids, full_ids


def preference_accuracy(model, tokenizer, rows):
    """The share of preference pairs where the model gives `chosen` a higher log-probability than `rejected`.

    0.5 is a coin flip; DPO pushes it up. Example: `preference_accuracy(model, tokenizer, pairs["test"])  # 0.97`
    """
    rows = check_preference_rows(rows, PAIR_COLUMNS, "rows")
    was_training = model.training
    model.eval()
    try:
        wins = sum(completion_log_probability(model, tokenizer, row["prompt"], row["chosen"])
                   > completion_log_probability(model, tokenizer, row["prompt"], row["rejected"]) for row in rows)
    finally:
        model.train(was_training)
    return wins / len(rows)


def mean_margin(model, tokenizer, rows):
    """The mean of log p(chosen) - log p(rejected) over preference pairs. Example: `mean_margin(model, tok, pairs)`."""
    rows = check_preference_rows(rows, PAIR_COLUMNS, "rows")
    margins = [completion_log_probability(model, tokenizer, row["prompt"], row["chosen"])
               - completion_log_probability(model, tokenizer, row["prompt"], row["rejected"]) for row in rows]
    return math.fsum(margins) / len(margins)
