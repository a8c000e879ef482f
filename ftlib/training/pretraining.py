"""Continued pretraining and text completion: `train(..., method="pretrain")` on raw text.

The text (a "text" column, a list of strings, or a folder of .txt/.md documents) is tokenized, each document
ended with the end-of-text token, laid end to end and cut into blocks of max_seq_length tokens ("packing"):
no padding is trained on, and every token is a target. The run is ftlib's SFT trainer (TRL's SFTTrainer)
with its speed defaults on, fused LoRA, the NF4 kernel, checkpointing and the labelled-logits loss (every
position is labelled here, so it computes all of them, as it must).

embedding_learning_rate (as in Unsloth's continued-pretraining notebooks) gives the trainable input
embeddings and output head their own, usually smaller, rate: a new domain's words need them to move, but
they shape every token, so a full rate would make the model forget more of what it knew.
"""

import math
from pathlib import Path

import torch

from ftlib.errors import FtlibError
from ftlib.training.methods import Method
from ftlib.training.trainer import FtlibTrainer

DOCUMENT_SUFFIXES = (".txt", ".md")
EMBEDDING_NAMES = ("embed_tokens", "lm_head", "wte", "embed_in", "embed_out")


def read_documents(source):
    """The texts of `source`: a folder (every .txt/.md file under it), a list of strings, or rows with "text".

    Example: `read_documents("my_documents/")  # ['first file's text', ...]`
    """
    from datasets import Dataset

    if isinstance(source, (str, Path)) and Path(source).expanduser().is_dir():
        files = sorted(path for path in Path(source).expanduser().rglob("*") if path.suffix in DOCUMENT_SUFFIXES)
        if not files:
            raise FtlibError(f"the folder {str(source)!r} holds no {' or '.join(DOCUMENT_SUFFIXES)} files: put the "
                             "documents there as plain text, or pass a list of strings")
        return [path.read_text(encoding="utf-8", errors="replace") for path in files]
    if isinstance(source, Dataset):
        source = source.to_list()
    if isinstance(source, dict) and "text" in source:
        source = [{"text": text} for text in source["text"]]
    if isinstance(source, (list, tuple)):
        texts = []
        for number, item in enumerate(source):
            text = item.get("text") if isinstance(item, dict) else item
            if not isinstance(text, str):
                found = sorted(item) if isinstance(item, dict) else type(item).__name__
                raise FtlibError(f"text row {number} holds {found}, not text: continued pretraining reads plain "
                                 "strings, rows with a 'text' column, or a folder of .txt/.md files")
            if text.strip():
                texts.append(text)
        if texts:
            return texts
        raise FtlibError("the text is empty: continued pretraining needs at least one non-empty document")
    raise FtlibError(f"method='pretrain' reads a folder of .txt/.md files, a list of strings, or rows with a 'text' "
                     f"column, got {type(source).__name__}: e.g. train(model, tokenizer, ['some text', ...], "
                     "method='pretrain')")


def pack(texts, tokenizer, max_seq_length):
    """Token blocks of exactly max_seq_length from `texts` laid end to end (a short last block is dropped,
    unless it is the only one). Example: `pack(["one document", "another"], tokenizer, 512)`."""
    end = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream = []
    for text in texts:
        # verbose=False: a document longer than the model's context is expected here; packing cuts it
        stream += tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"] + end
    blocks = [stream[start:start + max_seq_length] for start in range(0, len(stream), max_seq_length)]
    if len(blocks) > 1 and len(blocks[-1]) < max_seq_length:
        blocks.pop()
    return blocks


def prepare_text(dataset, eval_dataset, tokenizer, max_seq_length):
    """Packed training and held-out blocks for method="pretrain"; a DatasetDict's "test" split is held out.

    Example: `prepare_text({"train": texts, "test": held_out_texts}, None, tokenizer, 256)`
    """
    from datasets import Dataset, DatasetDict

    if isinstance(dataset, (dict, DatasetDict)) and "train" in dataset:
        if eval_dataset is None and "test" in dataset:
            eval_dataset = dataset["test"]
        dataset = dataset["train"]
    prepared = []
    for source in (dataset, eval_dataset):
        if source is None:
            prepared.append(None)
            continue
        blocks = Dataset.from_dict({"input_ids": pack(read_documents(source), tokenizer, max_seq_length)})
        blocks.ftlib_shape = "raw text"
        prepared.append(blocks)
    return prepared[0], prepared[1]


class PretrainingTrainer(FtlibTrainer):
    """ftlib's trainer, with the trainable embeddings and output head on their own learning rate when asked."""

    def __init__(self, *args, embedding_learning_rate=None, **kwargs):
        self.embedding_learning_rate = embedding_learning_rate
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if self.embedding_learning_rate is not None and not getattr(self, "_ftlib_embedding_group", False):
            _give_embeddings_their_rate(optimizer, self.model if model is None else model,
                                        self.embedding_learning_rate)
            self._ftlib_embedding_group = True
        return optimizer


def _give_embeddings_their_rate(optimizer, model, rate):
    """Move the embedding and output-head weights of each parameter group into a twin group at `rate`."""
    embedding_ids = {id(parameter) for name, parameter in model.named_parameters()
                     if parameter.requires_grad and _is_embedding(name)}
    for group in list(optimizer.param_groups):
        moved = [parameter for parameter in group["params"] if id(parameter) in embedding_ids]
        if moved:
            group["params"] = [parameter for parameter in group["params"] if id(parameter) not in embedding_ids]
            optimizer.add_param_group({**{key: value for key, value in group.items() if key != "params"},
                                       "params": moved, "lr": rate})


def _is_embedding(name):
    return any(part in name for part in EMBEDDING_NAMES)


def _embedding_keywords(model, options):
    rate = options.get("embedding_learning_rate")
    if rate is not None and not any(parameter.requires_grad and _is_embedding(name)
                                    for name, parameter in model.named_parameters()):
        raise FtlibError(
            f"embedding_learning_rate={rate:g} has nothing to act on: this model's embeddings and output head are "
            "frozen (LoRA trains adapters only); load the model with load_model(..., full_finetuning=True) to train "
            "them, or leave embedding_learning_rate out")
    return {"embedding_learning_rate": rate}


def _sft_config_class():
    from trl import SFTConfig

    return SFTConfig


PRETRAIN = Method(
    "pretrain", config_class=_sft_config_class, trainer_class=lambda: PretrainingTrainer,
    prepare_datasets=prepare_text, options=("embedding_learning_rate",), trainer_keywords=_embedding_keywords,
)


def perplexity(model, tokenizer, texts, max_seq_length=256):
    """exp(mean next-token loss) over `texts`, packed as training packs them: lower means better predicted.

    Example: `perplexity(model, tokenizer, held_out_texts)  # e.g. 12.4; the vocabulary size is pure guessing`
    """
    blocks = pack(read_documents(texts), tokenizer, max_seq_length)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for block in blocks:
                ids = torch.tensor([block], device=device)
                loss = model(input_ids=ids, labels=ids).loss
                total += float(loss) * (len(block) - 1)
                count += len(block) - 1
    finally:
        model.train(was_training)
    return math.exp(total / max(count, 1))
