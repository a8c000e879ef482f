"""Step 3 of the guide, your dataset: read it, recognise its shape, render it with a chat template, tokenize it.

    formatting.py  format_dataset, show_example, length_report, ensure_formatted (the public entry points)
    readers.py     files, folders, DataFrames and lists of rows -> one table
    shapes.py      which shape a row has (question/answer, Alpaca, conversations, raw text) -> one example
    templates.py   chat templates and the end-of-turn marker the model learns to stop at
    lengths.py     token-length statistics against max_seq_length

The modules import downwards only (formatting -> readers, shapes, templates, lengths), so there is no cycle.
"""

from ftlib.data.formatting import (IGNORE_INDEX, ensure_formatted, format_dataset, length_report, marked_example,
                                   show_example)
from ftlib.data.lengths import LengthReport

__all__ = ["IGNORE_INDEX", "LengthReport", "ensure_formatted", "format_dataset", "length_report", "marked_example",
           "show_example"]
