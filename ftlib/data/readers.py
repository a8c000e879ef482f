"""Readers: turn whatever the user has into rows (dicts), remembering where each row came from.

Accepted: a list of dicts (or of strings: raw text documents), a dict of columns, a datasets
Dataset, a pandas DataFrame, or a path to a .jsonl/.json/.csv/.tsv/.parquet/.txt/.md/source file
or to a folder of text and source files (each file one raw-text document).

    >>> table = read_table([{"question": "2+2?", "answer": "4"}])
    >>> table.rows[0]["answer"], table.place(0)
    ('4', 'row 0')
"""

import csv
import json
import math
import os

from ftlib.errors import FtlibError, FtlibFileNotFoundError, FtlibPermissionError

# Files read as one raw-text document each; a folder is searched for these (recursively).
TEXT_EXTENSIONS = (
    ".txt", ".md", ".rst", ".tex", ".py", ".js", ".ts", ".java", ".c", ".h", ".cpp", ".hpp", ".cs",
    ".go", ".rs", ".rb", ".php", ".swift", ".kt", ".scala", ".sh", ".sql", ".html", ".css", ".r",
    ".jl", ".lua", ".yaml", ".yml", ".toml",
)
TABLE_EXTENSIONS = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet")


class Table:
    """Rows plus where each came from, so errors can say "line 12 of train.jsonl"."""

    def __init__(self, rows, origin=None, lines=None, files=None):
        self.rows = rows
        self.origin = origin  # file name, or None for data passed in memory
        self.lines = lines  # line number of each row in a text file, when known
        self.files = files  # the file each row was read from, for a folder

    def place(self, index):
        if self.files is not None:
            return self.files[index]
        if self.lines is not None:
            return f"line {self.lines[index]} of {self.origin}"
        if self.origin:
            return f"row {index} of {self.origin}"
        return f"row {index}"


def _missing(value):
    """None, or NaN as pandas writes for an empty cell."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _clean(row):
    """A copy of `row` without empty cells, so a missing column looks the same from every reader."""
    return {key: value for key, value in row.items() if not _missing(value)}


def read_table(data):
    """Read `data` (see the module docstring) into a Table of dicts; never modifies `data`.

    Example:
        >>> read_table("data/headlines/train.jsonl").place(3)
        'line 4 of train.jsonl'
    """
    if isinstance(data, (str, os.PathLike)):
        table = _read_file_or_folder(os.fspath(data))
    elif hasattr(data, "to_list") and hasattr(data, "column_names"):  # datasets.Dataset
        table = Table([_clean(row) for row in data.to_list()])
    elif hasattr(data, "to_dict") and hasattr(data, "columns"):  # pandas.DataFrame
        table = Table([_clean(row) for row in data.to_dict("records")])
    elif isinstance(data, dict):
        table = _read_columns(data)
    elif isinstance(data, (list, tuple)):
        table = _read_list(data)
    else:
        raise FtlibError(
            f"cannot read data of type {type(data).__name__}: pass a list of dicts, a datasets "
            "Dataset or DatasetDict, a pandas DataFrame, or a path to a .jsonl/.json/.csv/.parquet/.txt "
            "file or a folder of text files"
        )
    if not table.rows:
        where = f" ({table.origin})" if table.origin else ""
        raise FtlibError(
            f"the dataset is empty{where}: there is nothing to train on. Pass at least one example, "
            'e.g. [{"question": "...", "answer": "..."}]'
        )
    return table


def _read_list(items):
    if all(isinstance(item, str) for item in items):
        return Table([{"text": item} for item in items])  # a list of strings: raw text documents
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise FtlibError(
                f"row {index} is a {type(item).__name__}, not a dict: every row must be a dict such as "
                '{"question": "...", "answer": "..."} (or pass a list of strings for raw text)'
            )
    return Table([_clean(item) for item in items])


def _read_columns(columns):
    lengths = {name: len(values) for name, values in columns.items() if isinstance(values, (list, tuple))}
    if len(lengths) != len(columns) or len(set(lengths.values())) > 1:
        raise FtlibError(
            f"a dict of columns needs equally long lists, got lengths {lengths or 'none'} for columns "
            f"{sorted(columns)}: pass a list of rows instead, e.g. [{{'question': ..., 'answer': ...}}]"
        )
    count = next(iter(lengths.values()), 0)
    return Table([_clean({name: columns[name][index] for name in columns}) for index in range(count)])


def _read_file_or_folder(path):
    """_read_path, with what the operating system or a file's encoding refused named by file and fix."""
    try:
        return _read_path(path)
    except FtlibError:
        raise
    except PermissionError as error:
        raise FtlibPermissionError(
            f"no permission to read {error.filename or path}: make the file readable (chmod u+r), or copy the data "
            "to a folder of yours and pass that path"
        ) from error
    except UnicodeDecodeError as error:
        raise FtlibError(
            f"{path} is not UTF-8 text ({error.reason} at byte {error.start}): re-save it as UTF-8 (most editors "
            "offer it under 'Save as'), then pass it again"
        ) from error
    except (OSError, ValueError) as error:  # e.g. a damaged .parquet file
        raise FtlibError(
            f"could not read {path} ({type(error).__name__}: {str(error)[:200]}): check that the file is complete "
            f"and really {os.path.splitext(path)[1] or 'text'} data, or convert it to .jsonl"
        ) from error


def _read_path(path):
    if not os.path.exists(path):
        hint = " (to train on a string of text, pass it in a list: [text])" if len(path) > 200 or "\n" in path else ""
        raise FtlibFileNotFoundError(
            f"path does not exist: {path!r}{hint}. Check the spelling and the working directory "
            f"({os.getcwd()}); relative paths start there"
        )
    if os.path.isdir(path):
        return _read_folder(path)
    name, extension = os.path.basename(path), os.path.splitext(path)[1].lower()
    if extension in (".jsonl", ".ndjson"):
        return _read_jsonl(path, name)
    if extension == ".json":
        return _read_json(path, name)
    if extension in (".csv", ".tsv"):
        return _read_csv(path, name, "\t" if extension == ".tsv" else ",")
    if extension == ".parquet":
        import pyarrow.parquet  # installed with datasets

        return Table([_clean(row) for row in pyarrow.parquet.read_table(path).to_pylist()], origin=name)
    if extension in TEXT_EXTENSIONS:
        return Table([{"text": _read_text(path)}], origin=name)
    raise FtlibError(
        f"don't know how to read {name!r} (extension {extension or 'none'}): use one of "
        f"{', '.join(TABLE_EXTENSIONS + ('.txt', '.md'))}, a source file, or a folder of text files"
    )


def _read_text(path):
    try:
        with open(path, encoding="utf-8-sig") as handle:
            return handle.read()
    except UnicodeDecodeError as error:
        raise FtlibError(
            f"{path} is not UTF-8 text ({error.reason} at byte {error.start}): re-save it as UTF-8, "
            "or move it out of the folder if it is not text"
        ) from error


def _parse_json_line(text, line_number, name):
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise FtlibError(
            f"line {line_number} of {name} is not valid JSON ({error.msg}, column {error.colno}): "
            f"{text[:80]!r}. Fix that line: each line must be one JSON object such as "
            '{"question": "...", "answer": "..."}'
        ) from error
    if not isinstance(value, dict):
        raise FtlibError(
            f"line {line_number} of {name} is a JSON {type(value).__name__}, not an object: each line "
            'must be one object such as {"question": "...", "answer": "..."}'
        )
    return _clean(value)


def _read_jsonl(path, name):
    rows, lines = [], []
    with open(path, encoding="utf-8-sig") as handle:
        for line_number, line in enumerate(handle, start=1):
            if line.strip():
                rows.append(_parse_json_line(line, line_number, name))
                lines.append(line_number)
    return Table(rows, origin=name, lines=lines)


def _read_json(path, name):
    text = _read_text(path)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        if error.msg == "Extra data":  # one object per line in a .json file: read it as JSONL
            return _read_jsonl(path, name)
        raise FtlibError(
            f"{name} is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}): "
            "fix the file, or save one object per line as .jsonl"
        ) from error
    if isinstance(value, dict):  # {"data": [...]} or {"train": [...]}: one list of rows inside
        lists = [item for item in value.values() if isinstance(item, list)]
        if len(lists) != 1:
            raise FtlibError(
                f"{name} holds a JSON object with keys {sorted(value)}: ftlib expects a list of rows "
                '[{"question": ..., "answer": ...}, ...] (or an object holding exactly one such list)'
            )
        value = lists[0]
    if not isinstance(value, list):
        raise FtlibError(f"{name} holds a JSON {type(value).__name__}: expected a list of row objects")
    for index, row in enumerate(value):
        if not isinstance(row, dict):
            raise FtlibError(
                f"row {index} of {name} is a JSON {type(row).__name__}, not an object: every row must be "
                'an object such as {"question": "...", "answer": "..."}'
            )
    return Table([_clean(row) for row in value], origin=name)


def _read_csv(path, name, delimiter):
    rows, lines = [], []
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        for row in reader:
            if None in row:  # more cells than header names
                raise FtlibError(
                    f"line {reader.line_num} of {name} has more cells than the header "
                    f"({', '.join(reader.fieldnames)}): quote cells that contain {delimiter!r}"
                )
            rows.append({key: value for key, value in row.items() if value is not None})
            lines.append(reader.line_num)
    return Table(rows, origin=name, lines=lines)


def _read_folder(folder):
    rows, paths = [], []
    for root, directories, files in os.walk(folder):
        directories[:] = sorted(d for d in directories if not d.startswith("."))
        for file_name in sorted(files):
            if not file_name.startswith(".") and os.path.splitext(file_name)[1].lower() in TEXT_EXTENSIONS:
                rows.append({"text": _read_text(os.path.join(root, file_name))})
                paths.append(os.path.join(root, file_name))
    if not rows:
        raise FtlibError(
            f"the folder {folder!r} has no text files to train on: ftlib reads "
            f"{', '.join(TEXT_EXTENSIONS[:6])} and other source files (each file one document)"
        )
    return Table(rows, origin=folder, files=paths)
