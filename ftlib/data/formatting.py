"""format_dataset: turn the user's data into token ids and labels the trainer can use, and show it.

The guide's step 3: the quality and amount of your data largely decide the result. Question/answer
pairs are the usual shape; Alpaca instructions, conversations (ShareGPT or OpenAI messages),
prompt/completion pairs and raw text (documents, code) work too (see ftlib/data/shapes.py). Files and
folders are read by ftlib/data/readers.py, chat templates live in ftlib/data/templates.py, the length
report in ftlib/data/lengths.py (`length_report` is importable from here too).

    >>> from ftlib import format_dataset
    >>> dataset = format_dataset([{"question": "Shares rose 5%. Impact?", "answer": "positive"}], tokenizer)
    >>> dataset.column_names
    ['text', 'prompt', 'completion', 'input_ids', 'attention_mask', 'labels']

Loss on responses only: `labels` is -100 (ignored by the loss) on system and user turns and on the
markers before each reply, so the model learns to write answers rather than to imitate questions.
"""

import math
import numbers
import warnings

from ftlib.checks import check_flag, check_positive, check_tokenizer
from ftlib.errors import FtlibError
from ftlib.data.lengths import LengthReport, default_max_seq_length, first_split, tokenizer_adds_bos
from ftlib.data.readers import read_table
from ftlib.data.shapes import choose_shape, to_example
from ftlib.data.templates import end_of_turn_marker, render_segments, resolve_template, warn_end_of_turn

__all__ = ["IGNORE_INDEX", "ensure_formatted", "format_dataset", "length_report", "marked_example", "show_example"]

IGNORE_INDEX = -100  # the label PyTorch's cross-entropy skips


def format_dataset(
    data,
    tokenizer,
    *,
    shape=None,  # None = detect from row 0; or qa, alpaca, sharegpt, messages, prompt_completion, text
    template=None,  # None = the tokenizer's chat template, else "alpaca"; or "chatml", "llama-3", a Jinja string
    question_column=None,  # your question column's name when it is not question/prompt/input/instruction
    answer_column=None,  # your answer column's name when it is not answer/response/output
    text_column=None,  # the raw-text column's name when it is not "text"
    system_prompt=None,  # added as the system turn of every conversation that has none
    max_seq_length=None,  # None = tokenizer.model_max_length (load_model sets it), else 2048; longer: more memory
    too_long="truncate",  # "truncate" keeps the start (the answer may lose its end, EOS); "drop" leaves it out
    # (raw text is never truncated: long documents are cut into max_seq_length pieces)
    train_on_responses_only=True,  # True: learn answers only (usual for chat/QA); False: also learn to write prompts
    test_size=None,  # e.g. 0.2 holds out 20% (the guide's choice); 0.1-0.3 typical; or a whole number of examples
    seed=3407,  # the split's shuffle; same seed, same split
    deduplicate=False,  # True drops exact repeats first, so no test example is also in train
    verbose=True,  # print what was done: shape, template, trained share, lengths, split
):
    """Format `data` for training: a Dataset, or a DatasetDict("train", "test") when test_size is given.

    `data`: a list of dicts (or of strings), a dict of columns, a datasets Dataset or DatasetDict,
    a pandas DataFrame, or a path to a .jsonl/.json/.csv/.parquet/.txt file or a folder of text
    files. Nothing you pass is modified. Columns of the result: `text` (the whole example, ending
    with EOS), `prompt` (the text before the final answer), `completion` (the final answer),
    `input_ids`, `attention_mask`, `labels` (-100 where no loss is taken). When an example is
    truncated, `text` still holds all of it; only the token columns are cut.

    Example:
        >>> splits = format_dataset("data/headlines/train.jsonl", tokenizer, test_size=0.2)
        >>> splits["train"][0]["text"].endswith(tokenizer.eos_token)
        True
    """
    _check_options(tokenizer, train_on_responses_only, deduplicate, verbose, seed)
    if _is_splits(data):
        return _format_splits(data, tokenizer, locals())
    max_seq_length = _check_settings(tokenizer, max_seq_length, too_long, test_size)
    table = read_table(data)
    if shape is None and _preference_columns(table.rows):
        return _format_preferences(table.rows, _preference_columns(table.rows), test_size, seed, verbose)
    spec = choose_shape(table.rows, shape, question_column, answer_column, text_column)
    places = [table.place(index) for index in range(len(table.rows))]
    examples = [to_example(row, spec, place, system_prompt) for row, place in zip(table.rows, places)]
    examples, places, removed = _deduplicate(examples, places) if deduplicate else (examples, places, 0)
    template_note = ""
    if spec.shape == "text":
        columns, lengths, handled = _chunk_documents(examples, tokenizer, max_seq_length)
    else:
        if any("messages" in example for example in examples):
            source, template_note = resolve_template(tokenizer, template)
            warn_end_of_turn(tokenizer, source)
        else:
            source = None
        columns, lengths, handled = _tokenize_examples(
            examples, places, tokenizer, source, max_seq_length, too_long, train_on_responses_only
        )
    from datasets import Dataset

    dataset = Dataset.from_dict(columns)
    report = LengthReport(lengths, max_seq_length, handled)
    result = _split(dataset, test_size, seed) if test_size is not None else dataset
    # Plain attributes (lost by .map/.select): train() records the shape; length_report reuses the
    # lengths of all examples (both splits), counted before truncation.
    for part in result.values() if test_size is not None else [result]:
        part.ftlib_shape, part.ftlib_length_report = spec.shape, report
    if verbose:
        print(_summary(spec, template_note, dataset, report, removed, result, test_size, seed))
    return result


def _preference_columns(rows):
    """("prompt", "chosen", "rejected") for DPO/ORPO rows, ("prompt", "completion", "label") for KTO's, else None."""
    from ftlib.training.preference import KTO_COLUMNS, PAIR_COLUMNS

    keys = set(rows[0]) if rows and isinstance(rows[0], dict) else set()
    return next((columns for columns in (PAIR_COLUMNS, KTO_COLUMNS) if set(columns) <= keys), None)


def _format_preferences(rows, columns, test_size, seed, verbose):
    """Preference rows checked (row number, what was wrong, the fix) and kept as text: TRL's DPO, ORPO and KTO
    trainers apply the chat template and tokenize them. train(..., method="dpo" | "orpo" | "kto") takes the result."""
    from datasets import Dataset

    from ftlib.training.preference import check_preference_rows

    shape = "preference pairs" if "chosen" in columns else "kto"
    dataset = Dataset.from_list(check_preference_rows(rows, columns, "data"))
    result = _split(dataset, test_size, seed) if test_size is not None else dataset
    for part in result.values() if test_size is not None else [result]:
        part.ftlib_shape = shape
    if verbose:
        method = "method='dpo' or 'orpo'" if shape == "preference pairs" else "method='kto'"
        print(f"Checked {len(dataset)} rows of shape {shape} ({', '.join(columns)}); kept as text for "
              f"train(..., {method}), which tokenizes them with the chat template.")
    return result


def _check_options(tokenizer, responses_only, deduplicate, verbose, seed):
    check_tokenizer(tokenizer, "format_dataset")
    for name, value in (("train_on_responses_only", responses_only), ("deduplicate", deduplicate),
                        ("verbose", verbose)):
        check_flag(name, value)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise FtlibError(f"seed must be a whole number, got {seed!r}: try seed=3407 (the same seed, the same split)")


def _is_splits(data):
    """A DatasetDict, or a plain dict like {"train": [rows], "test": [rows]}."""
    if hasattr(data, "column_names") and isinstance(data.column_names, dict):
        return True
    if not (isinstance(data, dict) and data and set(data) <= {"train", "test", "validation"}):
        return False
    return all(isinstance(rows, (list, tuple)) and all(isinstance(r, dict) for r in rows) for rows in data.values())


def _format_splits(splits, tokenizer, arguments):
    """Format each split of a DatasetDict the same way; "validation" becomes "test" if there is none."""
    from datasets import DatasetDict

    options = {key: value for key, value in arguments.items() if key not in ("data", "tokenizer")}
    test_size = options.pop("test_size")
    names = list(splits.keys())
    if test_size is not None and any(name != "train" for name in names):
        raise FtlibError(
            f"the data already has the splits {names}: pass test_size=None to keep them, "
            "or pass data['train'] to split it anew"
        )
    if test_size is not None:
        return format_dataset(splits["train"], tokenizer, test_size=test_size, **options)
    rename = "validation" in names and "test" not in names
    renamed = {("test" if rename and name == "validation" else name): split for name, split in splits.items()}
    return DatasetDict({name: format_dataset(split, tokenizer, **options) for name, split in renamed.items()})


def _check_settings(tokenizer, max_seq_length, too_long, test_size):
    if getattr(tokenizer, "eos_token", None) is None:
        raise FtlibError(
            "the tokenizer has no eos_token, so examples cannot end with one and generation would never "
            "stop: set tokenizer.eos_token (e.g. to the chat template's end-of-turn marker) first"
        )
    if max_seq_length is None:
        max_seq_length = default_max_seq_length(tokenizer)
    if isinstance(max_seq_length, bool) or not isinstance(max_seq_length, numbers.Integral) or max_seq_length < 2:
        raise FtlibError(f"max_seq_length must be a whole number of tokens >= 2, got {max_seq_length!r}: try 2048")
    if too_long not in ("truncate", "drop"):
        raise FtlibError(f"too_long must be 'truncate' or 'drop', got {too_long!r}")
    if test_size is not None:
        is_fraction = isinstance(test_size, float) and 0 < test_size < 1
        is_count = isinstance(test_size, numbers.Integral) and not isinstance(test_size, bool) and test_size >= 1
        if not (is_fraction or is_count):
            raise FtlibError(
                f"test_size must be a fraction between 0 and 1 or a whole number of examples, got {test_size!r}: "
                "try test_size=0.2 (hold out 20%)"
            )
    return int(max_seq_length)


def _deduplicate(examples, places):
    seen, kept, kept_places = set(), [], []
    for example, place in zip(examples, places):
        key = repr(sorted((name, repr(value)) for name, value in example.items()))
        if key not in seen:
            seen.add(key)
            kept.append(example)
            kept_places.append(place)
    return kept, kept_places, len(examples) - len(kept)


def _segments(example, tokenizer, source, marker):
    """[(text, trained)], prompt, completion for one normalised example."""
    if "messages" in example:
        segments, prompt = render_segments(tokenizer, source, example["messages"], marker)
        return segments, prompt, example["messages"][-1]["content"]
    completion = example["completion"] + tokenizer.eos_token
    return [(example["prompt"], False), (completion, True)], example["prompt"], example["completion"]


def _tokenize_examples(examples, places, tokenizer, source, max_seq_length, too_long, responses_only):
    marker = end_of_turn_marker(tokenizer, source) if source else ""
    rendered = [_segments(example, tokenizer, source, marker) for example in examples]
    pieces = [text for segments, _, _ in rendered for text, _ in segments]
    # One batched call: segments are tokenized apart so the prompt's tokens are exactly what
    # tokenizer(prompt) gives at generation time (BPE could merge across the join otherwise).
    piece_ids = iter(tokenizer(pieces, add_special_tokens=False)["input_ids"]) if pieces else iter(())
    bos_id, adds_bos = tokenizer.bos_token_id, tokenizer_adds_bos(tokenizer)
    columns = {name: [] for name in ("text", "prompt", "completion", "input_ids", "attention_mask", "labels")}
    lengths, over, empty = [], [], []
    for (segments, prompt, completion), place in zip(rendered, places):
        text = "".join(piece for piece, _ in segments)
        ids, labels = [], []
        if adds_bos and not text.startswith(tokenizer.bos_token):
            ids, labels = [bos_id], [IGNORE_INDEX]
        for _, trained in segments:
            token_ids = next(piece_ids)
            ids += token_ids
            labels += token_ids if (trained or not responses_only) else [IGNORE_INDEX] * len(token_ids)
        lengths.append(len(ids))
        if len(ids) > max_seq_length:
            over.append(place)
            if too_long == "drop":
                continue
            ids, labels = ids[:max_seq_length], labels[:max_seq_length]
        if all(label == IGNORE_INDEX for label in labels):
            empty.append(place)
        for name, value in zip(columns, (text, prompt, completion, ids, [1] * len(ids), labels)):
            columns[name].append(value)
    if empty:
        raise FtlibError(
            f"{len(empty)} example(s) have no trainable tokens (first: {empty[0]}): max_seq_length="
            f"{max_seq_length} cut off their whole answer. Raise max_seq_length, shorten the prompts, or "
            "pass too_long='drop' to leave such examples out"
        )
    if not columns["text"]:
        raise FtlibError(
            f"all {len(examples)} examples are longer than max_seq_length={max_seq_length} and too_long='drop' "
            "removed them all: raise max_seq_length or use too_long='truncate'"
        )
    if over:
        warnings.warn(
            f"{len(over)} of {len(examples)} examples are longer than max_seq_length={max_seq_length} "
            f"(first: {over[0]}) and were {'dropped' if too_long == 'drop' else 'truncated'}: raise "
            "max_seq_length to keep them whole", stacklevel=3
        )
    return columns, lengths, "dropped" if too_long == "drop" else "truncated"


def _chunk_documents(examples, tokenizer, max_seq_length):
    """Raw text: each document + EOS, cut into pieces of at most max_seq_length tokens.

    Only a document's last piece ends with EOS: the model should not learn to stop mid-document.
    """
    bos_id, adds_bos = tokenizer.bos_token_id, tokenizer_adds_bos(tokenizer)
    fast = getattr(tokenizer, "is_fast", False)  # fast tokenizers give offsets: exact text per piece
    columns = {name: [] for name in ("text", "prompt", "completion", "input_ids", "attention_mask", "labels")}
    lengths = []
    for example in examples:
        document = example["text"]
        encoded = tokenizer(document, add_special_tokens=False, return_offsets_mapping=fast)
        ids = list(encoded["input_ids"])
        if fast:  # where each token starts in the document; past the last token, the document's end
            starts_at = [start for start, _ in encoded["offset_mapping"]]
            starts_at = [0] + starts_at[1:] + [len(document)] * (max_seq_length + 1)
        lead = 1 if adds_bos and not document.startswith(tokenizer.bos_token) else 0
        all_ids = [bos_id] * lead + ids + [tokenizer.eos_token_id]
        for begin in range(0, len(all_ids), max_seq_length):
            chunk = all_ids[begin: begin + max_seq_length]
            if fast:  # slice the document itself, so the text is exactly what was tokenized
                text = document[starts_at[max(begin - lead, 0)]: starts_at[begin + max_seq_length - lead]]
            else:
                text = tokenizer.decode([token for token in chunk if token not in (bos_id, tokenizer.eos_token_id)])
            if begin + max_seq_length >= len(all_ids):
                text += tokenizer.eos_token
            for name, value in zip(columns, (text, "", "", chunk, [1] * len(chunk), list(chunk))):
                columns[name].append(value)
            lengths.append(len(chunk))
    return columns, lengths, "chunked"


def _split(dataset, test_size, seed):
    count = len(dataset)
    test_count = math.ceil(test_size * count) if isinstance(test_size, float) else int(test_size)
    if count < 2 or test_count >= count or test_count < 1:
        raise FtlibError(
            f"test_size={test_size!r} cannot split {count} example(s) into two non-empty parts: use more data, "
            "a smaller test_size, or test_size=None"
        )
    return dataset.train_test_split(test_size=test_size if isinstance(test_size, float) else test_count, seed=seed)


def _summary(spec, template_note, dataset, report, removed, result, test_size, seed):
    trained = sum(sum(label != IGNORE_INDEX for label in labels) for labels in dataset["labels"])
    total = sum(len(ids) for ids in dataset["input_ids"])
    dropped = f" ({report.over} too long, dropped)" if report.handled == "dropped" and report.over else ""
    with_template = f" with {template_note}" if template_note else ""
    lines = [f"Formatted {len(dataset)} examples{dropped} of shape {spec.describe()}{with_template}."]
    if removed:
        lines.append(f"Removed {removed} exact duplicate(s) before splitting.")
    lines.append(
        f"Trained on {trained:,} of {total:,} tokens ({trained / max(total, 1):.0%}); "
        "see which with ftlib.data.show_example(dataset, tokenizer)."
    )
    lines.append(str(report))
    if test_size is not None:
        train_count, test_count = len(result["train"]), len(result["test"])
        lines.append(f"Split: {train_count} train / {test_count} test (test_size={test_size}, seed={seed}).")
    return "\n".join(lines)


def marked_example(dataset, tokenizer, index=0):
    """One formatted example as text, with the untrained part inside ⟦ ⟧ (labels -100).

    Example:
        >>> marked_example(dataset, tokenizer)
        '⟦<|begin|><|user|>\\nShares rose. Impact?<|end|><|assistant|>\\n⟧positive<|end|>'
    """
    dataset = first_split(dataset)
    if not _has_columns(dataset, ("input_ids", "labels")):
        raise FtlibError(
            "show_example reads format_dataset's output (its input_ids and labels), got raw data: "
            "show_example(format_dataset(rows, tokenizer), tokenizer)"
        )
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(dataset):
        raise FtlibError(f"index {index!r} is outside the dataset: pass a whole number from 0 to {len(dataset) - 1}")
    example = dataset[index]
    runs, current, current_masked = [], [], None
    for token, label in zip(example["input_ids"], example["labels"]):
        masked = label == IGNORE_INDEX
        if current and masked != current_masked:
            runs.append((current, current_masked))
            current = []
        current.append(token)
        current_masked = masked
    runs.append((current, current_masked))
    parts = []
    for tokens, masked in runs:
        text = tokenizer.decode(tokens, skip_special_tokens=False)
        parts.append(f"⟦{text}⟧" if masked else text)
    return "".join(parts)


def show_example(dataset, tokenizer, *, index=0):
    """Print one example with the part the model only reads (no loss) inside ⟦ ⟧.

    Everything outside the brackets is what the model learns to write; it should be the answer
    followed by the EOS token, or the whole text for raw-text training.

    Example:
        >>> show_example(dataset, tokenizer, index=0)
        Example 0: 31 tokens, 2 trained on. Inside ⟦ ⟧: read only (labels -100); outside: learned.
        ⟦<|begin|><|user|>...<|assistant|>\\n⟧positive<|end|>
    """
    text = marked_example(dataset, tokenizer, index)  # checks the index first
    example = first_split(dataset)[index]
    trained = sum(label != IGNORE_INDEX for label in example["labels"])
    print(
        f"Example {index}: {len(example['input_ids'])} tokens, {trained} trained on. "
        f"Inside ⟦ ⟧: read only (labels -100); outside: learned.\n{text}"
    )

def _has_columns(dataset, needed):
    return hasattr(dataset, "column_names") and isinstance(dataset.column_names, list) \
        and set(needed) <= set(dataset.column_names)


def is_formatted(data, needed=("input_ids", "labels")):
    """True when every split of `data` already has the `needed` columns (format_dataset output).

    Example:
        >>> is_formatted(format_dataset(rows, tokenizer, verbose=False))
        True
    """
    splits = list(data.values()) if _is_splits(data) else [data]
    return all(_has_columns(split, needed) for split in splits)


def ensure_formatted(data, tokenizer, *, max_seq_length=None, needed=("input_ids", "labels"), verbose=False):
    """`data` as format_dataset output: returned unchanged when every split has the `needed` columns, else formatted.

    train, evaluate and length_report all accept raw rows as well as format_dataset's output; this is the one
    place that tells the two apart.

    Example:
        >>> ensure_formatted([{"question": "Shares rose. Impact?", "answer": "positive"}], tokenizer).column_names
        ['text', 'prompt', 'completion', 'input_ids', 'attention_mask', 'labels']
    """
    if is_formatted(data, needed):
        return data
    settings = {"max_seq_length": max_seq_length} if max_seq_length else {}
    return format_dataset(data, tokenizer, verbose=verbose, **settings)


def length_report(dataset, tokenizer=None, *, max_seq_length=None):
    """Token-length statistics; `dataset` is format_dataset output (or raw data, then `tokenizer` is needed).

    Lengths count the whole `text` of each example (before any truncation) when a tokenizer is given.

    Example:
        >>> print(length_report(dataset, tokenizer))
        Token lengths of 400 examples: min 18, median 24, 95th percentile 31, max 40; none longer ...
    """
    check_positive("max_seq_length", max_seq_length, "2048, or None for the tokenizer's", allow_none=True)
    dataset = first_split(dataset)
    if tokenizer is None and not _has_columns(dataset, ("input_ids",)):
        raise FtlibError("length_report needs a tokenizer for unformatted data: length_report(data, tokenizer)")
    dataset = ensure_formatted(dataset, tokenizer, max_seq_length=max_seq_length, needed=("input_ids",))
    known = getattr(dataset, "ftlib_length_report", None)  # counted before truncation or dropping
    if known is not None and max_seq_length in (None, known.max_seq_length):
        return known
    if max_seq_length is None:
        max_seq_length = default_max_seq_length(tokenizer)
    if tokenizer is None:
        lengths = [len(ids) for ids in dataset["input_ids"]]
    else:
        adds_bos = tokenizer_adds_bos(tokenizer)
        texts = list(dataset["text"])
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
        bos = tokenizer.bos_token
        lengths = [len(ids) + (adds_bos and not text.startswith(bos)) for ids, text in zip(encoded, texts)]
    return LengthReport(lengths, max_seq_length)
