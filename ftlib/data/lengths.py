"""Token lengths: how long examples are against max_seq_length, as text and as a histogram.

Examples longer than max_seq_length are truncated or dropped (format_dataset's `too_long`), so
look before training:

    >>> from ftlib.data import format_dataset, length_report
    >>> report = length_report(format_dataset(rows, tokenizer, verbose=False))
    >>> print(report)
    Token lengths of 1024 examples: min 45, median 52, 95th percentile 57, max 62; none longer ...
    >>> report.figure()  # the histogram, in a notebook
"""

import math
import statistics


FALLBACK_MAX_SEQ_LENGTH = 2048  # the guide's testing length, when the tokenizer states none


def default_max_seq_length(tokenizer):
    """tokenizer.model_max_length when it is a real limit (load_model sets it), else 2048.

    Example:
        >>> default_max_seq_length(tokenizer)
        2048
    """
    stated = getattr(tokenizer, "model_max_length", None)
    # tokenizers without a limit report a huge sentinel (about 1e30)
    return stated if isinstance(stated, int) and 0 < stated <= 1_000_000 else FALLBACK_MAX_SEQ_LENGTH


def tokenizer_adds_bos(tokenizer):
    """True when tokenizer(text) puts BOS first by itself (so generate's prompts will start with it).

    Example:
        >>> tokenizer_adds_bos(tokenizer)  # the tiny model's template writes BOS as text instead
        False
    """
    bos = getattr(tokenizer, "bos_token_id", None)
    ids = tokenizer("a")["input_ids"]
    return bos is not None and len(ids) > 0 and ids[0] == bos


class LengthReport:
    """Token lengths of a dataset against max_seq_length, as text (print it) and as a histogram.

    Example:
        >>> report = length_report(dataset, tokenizer)
        >>> print(report)
        >>> report.figure()  # in a notebook, shows the histogram
    """

    def __init__(self, lengths, max_seq_length, handled="truncated"):
        self.lengths = list(lengths)
        self.max_seq_length = max_seq_length
        self.handled = handled  # what happened to over-long examples: truncated, dropped or chunked
        self.over = sum(length > max_seq_length for length in self.lengths)

    def __str__(self):
        lengths = sorted(self.lengths)
        if not lengths:
            return "Token lengths: no examples."
        p95 = lengths[min(len(lengths) - 1, math.ceil(0.95 * len(lengths)) - 1)]
        text = (
            f"Token lengths of {len(lengths)} examples: min {lengths[0]}, median {statistics.median(lengths):g}, "
            f"95th percentile {p95}, max {lengths[-1]}; "
        )
        if self.handled == "chunked":
            return text + f"documents were cut into pieces of at most max_seq_length={self.max_seq_length}."
        if not self.over:
            return text + f"none longer than max_seq_length={self.max_seq_length}."
        return text + f"{self.over} longer than max_seq_length={self.max_seq_length} ({self.handled})."

    __repr__ = __str__

    def figure(self):
        """A matplotlib Figure: histogram of lengths with max_seq_length marked (no pyplot state)."""
        from matplotlib.figure import Figure

        figure = Figure(figsize=(6, 3))
        axes = figure.add_subplot()
        axes.hist(self.lengths, bins=min(40, max(5, len(set(self.lengths)))), color="tab:blue")
        limit = self.max_seq_length
        axes.axvline(limit, color="tab:red", linestyle="--", label=f"max_seq_length={limit}")
        axes.set_xlabel("tokens per example")
        axes.set_ylabel("examples")
        axes.set_title(f"{self.over} of {len(self.lengths)} longer than max_seq_length", fontsize=10)
        axes.legend()
        figure.tight_layout()
        return figure


def first_split(dataset):
    is_dict = hasattr(dataset, "column_names") and isinstance(dataset.column_names, dict)
    return dataset["train"] if is_dict else dataset
