"""The demo task: does this headline impact the company positively or negatively?

Run `python -m ftlib.demo.headlines` to rewrite data/headlines/: {train,test}.jsonl answer in one word,
{train,test}_reasons.jsonl ask for the word and a one-sentence reason. The output is the same for the same
seed. The test split uses companies that never appear in the train split, so a model that scores well on it
has learned what events mean, not which companies are lucky.

The one-word task shows learning in its accuracy, but its training loss falls toward 0, as a single fixed word
allows. The reasoned task is closer to real data: a right answer can be worded many ways, so a healthy run's
loss settles well above 0 (the guide's "near 0.5"), and a loss near 0 there means memorising.
"""

import argparse
import json
import random
from pathlib import Path

from ftlib.demo import CHECKOUT_DATA, write_rows
from ftlib.demo.world import (BAD_EVENTS, BAD_OUTLOOKS, GOOD_EVENTS, GOOD_OUTLOOKS, REASON_WORDINGS, company_names,
                              fill)

QUESTION = "Headline: {headline}\nDoes this headline impact {company} positively or negatively?"
REASON_REQUEST = " Answer in one word, then give the reason in one sentence."
LABELS = ("positive", "negative")
OUTPUT_FOLDER = CHECKOUT_DATA / "headlines"  # written into the checkout; a wheel ships a copy
README = """# headlines: the demo task

Does this headline impact the company positively or negatively? {train} training rows and {test}
held-out rows, half "positive" and half "negative", written by `python -m ftlib.demo.headlines`
(ftlib/demo/headlines.py; same seed, same rows). Headlines are invented from the event templates in
ftlib/demo/world.py; the held-out rows are about companies that never appear in the training rows,
and no headline is in both. Load them with `ftlib.demo.load_headlines("train")`. A row:

    {example}

The same rows asking for a reason too are in {{train,test}}_reasons.jsonl
(`ftlib.demo.load_headlines("train", reasons=True)`); each reason is drawn from several wordings, so many
answers are right and a fine-tune's loss settles above 0. A row:

    {reasoned}
"""


def make_rows(companies, count, rng, taken):
    """`count` rows about `companies`, half positive and half negative, no headline in `taken`.

    Example:
        >>> rows = make_rows(["Velex Foods"], 2, random.Random(0), set())
        >>> sorted(row["answer"] for row in rows)
        ['negative', 'positive']
    """
    rows = []
    for index in range(count):
        label = LABELS[index % 2]
        events = GOOD_EVENTS if label == "positive" else BAD_EVENTS
        for _attempt in range(1000):
            company = rng.choice(companies)
            headline = fill(rng.choice(events)[0], company, rng, companies)
            # The first letter is capitalised as a headline's would be.
            headline = headline[0].upper() + headline[1:]
            if headline not in taken:
                break
        else:
            raise RuntimeError(f"could not find {count} distinct headlines: lower the count")
        taken.add(headline)
        rows.append({"question": QUESTION.format(headline=headline, company=company), "answer": label,
                     "company": company})
    rng.shuffle(rows)
    return rows


def with_reasons(rows, rng):
    """The same rows asking for a reason too: "Positive. After news like this, investors will probably cheer."

    Example:
        >>> with_reasons([{"question": "Headline: ...?", "answer": "negative", "company": "Velex Foods"}],
        ...              random.Random(0))[0]["answer"].split(".")[0]
        'Negative'
    """
    reasoned = []
    for row in rows:
        outlooks = GOOD_OUTLOOKS if row["answer"] == "positive" else BAD_OUTLOOKS
        reason = rng.choice(REASON_WORDINGS).format(outlook=rng.choice(outlooks), company=row["company"])
        reasoned.append({"question": row["question"] + REASON_REQUEST,
                         "answer": f"{row['answer'].capitalize()}. {reason[0].upper()}{reason[1:]}"})
    return reasoned


def label_of(answer):
    """"positive" or "negative" from an answer's first word (None when it is neither).

    Example:
        >>> label_of("Positive. Investors will probably cheer.")
        'positive'
    """
    words = str(answer).strip().split(maxsplit=1)
    first = words[0].strip(".,:;!").lower() if words else ""
    return first if first in LABELS else None


def same_label(predicted, expected):
    """A scorer for `ftlib.evaluate`: right when the predicted answer starts with the expected label.

    Example:
        >>> same_label("Negative. Investors will probably worry.", "Negative. The stock should slide.")
        True
    """
    return label_of(predicted) is not None and label_of(predicted) == label_of(expected)


def make_splits(train_size=1024, test_size=64, test_companies=12, seed=0):
    """Train and test rows; the test split's companies never appear in the train split.

    Example:
        >>> splits = make_splits(train_size=8, test_size=4)
        >>> len(splits["train"]), len(splits["test"])
        (8, 4)
    """
    companies = company_names(60, seed=seed)
    rng = random.Random(seed)
    taken = set()
    return {
        "train": make_rows(companies[test_companies:], train_size, rng, taken),
        "test": make_rows(companies[:test_companies], test_size, rng, taken),
    }


def _public(rows):
    return [{"question": row["question"], "answer": row["answer"]} for row in rows]


def write_splits(folder=OUTPUT_FOLDER, **settings):
    """Write train.jsonl and test.jsonl into `folder`; returns {split: path}.

    Example:
        >>> write_splits("/tmp/headlines", train_size=8, test_size=4)  # doctest: +SKIP
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    splits = make_splits(**settings)
    reasons_rng = random.Random(settings.get("seed", 0) + 1)
    written = {}
    for split, rows in splits.items():
        written[split] = _public(rows)
        written[f"{split}_reasons"] = with_reasons(rows, reasons_rng)
    paths = write_rows(folder, written)
    (folder / "README.md").write_text(README.format(train=len(splits["train"]), test=len(splits["test"]),
                                                    example=json.dumps(written["test"][0]),
                                                    reasoned=json.dumps(written["test_reasons"][0])))
    return paths


def main():
    parser = argparse.ArgumentParser(description="Write the headline task's train and test splits.")
    parser.add_argument("--train-size", type=int, default=1024)
    parser.add_argument("--test-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folder", default=str(OUTPUT_FOLDER))
    arguments = parser.parse_args()
    paths = write_splits(arguments.folder, train_size=arguments.train_size,
                         test_size=arguments.test_size, seed=arguments.seed)
    for split, path in paths.items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
