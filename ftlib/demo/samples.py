"""A sample of "your own data": the files notebooks 03 and 08 load as a user would load theirs.

Run `python -m ftlib.demo.samples` to rewrite data/samples/:

- my_data.csv: a table with a header row, columns `question` and `answer` (the shape most people's data has);
- my_data.jsonl: the same examples as conversations, one JSON object a line: {"messages": [user, assistant]}.

The examples are the first 48 rows of the reasoned headline task's training split (ftlib/demo/headlines.py):
a headline question, and an answer that gives the word and a one-sentence reason. Same data, same files.
Find them, installed or in a checkout, with `ftlib.demo.sample_file("my_data.csv")`.
"""

import csv
import io
import json
from pathlib import Path

from ftlib.demo import CHECKOUT_DATA, SAMPLE_FILES, load_headlines

SAMPLE_ROWS = 48  # one epoch is 6 steps of 8: a first run on a CPU takes about a minute with a 135M model
OUTPUT_FOLDER = CHECKOUT_DATA / "samples"  # written into the checkout; a wheel ships a copy


def sample_rows(count=SAMPLE_ROWS):
    """The sample's examples: {"question": ..., "answer": "Positive. <a reason>"}.

    Example:
        >>> sample_rows(1)[0]["answer"].split(".")[0] in ("Positive", "Negative")
        True
    """
    return load_headlines("train", reasons=True)[:count]


def as_csv(rows):
    """The rows as CSV text: a header `question,answer`, then one row each (quoted where needed).

    Example:
        >>> as_csv([{"question": "2+2?", "answer": "4"}])
        'question,answer\\n2+2?,4\\n'
    """
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["question", "answer"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def as_jsonl(rows):
    """The rows as chat conversations, one JSON object a line.

    Example:
        >>> as_jsonl([{"question": "2+2?", "answer": "4"}])
        '{"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}\\n'
    """
    lines = []
    for row in rows:
        messages = [{"role": "user", "content": row["question"]}, {"role": "assistant", "content": row["answer"]}]
        lines.append(json.dumps({"messages": messages}) + "\n")
    return "".join(lines)


def write_samples(folder=OUTPUT_FOLDER, count=SAMPLE_ROWS):
    """Write my_data.csv and my_data.jsonl into `folder`; returns {file name: path}.

    Example:
        >>> write_samples("/tmp/samples")  # doctest: +SKIP
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = sample_rows(count)
    contents = dict(zip(SAMPLE_FILES, (as_csv(rows), as_jsonl(rows))))
    paths = {}
    for name, text in contents.items():
        paths[name] = folder / name
        paths[name].write_text(text)
    return paths


def main():
    for name, path in write_samples().items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
