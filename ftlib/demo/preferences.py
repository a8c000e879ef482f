"""Preference data from the headline world: which of two answers is better?

Run `python -m ftlib.demo.preferences` to rewrite data/preferences/: {train,test}_pairs.jsonl for DPO and
ORPO (prompt, chosen = the right outlook with a reason, rejected = the wrong one), and {train,test}_kto.jsonl
for KTO (prompt, completion, label: True for a right answer, False for a wrong one). Prompts and answers are
chat messages, so the model's chat template frames them as it frames SFT rows. The test split's companies
never appear in the train split, as in ftlib.demo.headlines. Same seed, same rows.
"""

import argparse
import random

from ftlib.demo import CHECKOUT_DATA, DATA_FOLDER, read_rows, write_rows
from ftlib.demo.headlines import REASON_REQUEST, make_splits
from ftlib.demo.world import BAD_OUTLOOKS, GOOD_OUTLOOKS, REASON_WORDINGS

OUTPUT_FOLDER = CHECKOUT_DATA / "preferences"  # written into the checkout; a wheel ships a copy


def answer(label, company, wording, outlook):
    """A one-word outlook and a one-sentence reason: wording `wording` of REASON_WORDINGS, outlook number `outlook`.

    Example:
        >>> answer("negative", "Velex Foods", 0, 2)
        'Negative. After news like this, the stock should slide.'
    """
    outlooks = GOOD_OUTLOOKS if label == "positive" else BAD_OUTLOOKS
    reason = REASON_WORDINGS[wording].format(outlook=outlooks[outlook], company=company)
    return f"{label.capitalize()}. {reason[0].upper()}{reason[1:]}"


def pair(row, rng):
    """One DPO/ORPO row from a headline row: the right answer chosen, the opposite one rejected.

    Both answers share the wording and the forecast's place in its list (rise/fall, cheer/worry), so they
    differ only where the outlook differs: what the model learns to prefer is the right direction, not a
    phrasing.

    Example:
        >>> row = {"question": "Headline: ...?", "answer": "positive", "company": "Velex Foods"}
        >>> pair(row, random.Random(0))["rejected"][0]["content"].split(".")[0]
        'Negative'
    """
    wrong = "negative" if row["answer"] == "positive" else "positive"
    wording, outlook = rng.randrange(len(REASON_WORDINGS)), rng.randrange(len(GOOD_OUTLOOKS))
    return {"prompt": [{"role": "user", "content": row["question"] + REASON_REQUEST}],
            "chosen": [{"role": "assistant", "content": answer(row["answer"], row["company"], wording, outlook)}],
            "rejected": [{"role": "assistant", "content": answer(wrong, row["company"], wording, outlook)}]}


def kto_row(row, desirable, rng):
    """One KTO row: the right answer labelled True, or the wrong one labelled False.

    Example:
        >>> row = {"question": "Headline: ...?", "answer": "positive", "company": "Velex Foods"}
        >>> kto_row(row, False, random.Random(0))["label"]
        False
    """
    made = pair(row, rng)
    return {"prompt": made["prompt"], "completion": made["chosen" if desirable else "rejected"], "label": desirable}


def make_preference_splits(train_size=256, test_size=64, seed=0):
    """{"train_pairs", "test_pairs", "train_kto", "test_kto"}: lists of rows.

    Example:
        >>> splits = make_preference_splits(train_size=8, test_size=4)
        >>> len(splits["train_pairs"]), len(splits["test_kto"])
        (8, 4)
    """
    headlines = make_splits(train_size=train_size, test_size=test_size, seed=seed)
    rng = random.Random(seed + 2)
    made = {}
    for split, rows in headlines.items():
        made[f"{split}_pairs"] = [pair(row, rng) for row in rows]
        # Alternating keeps half the KTO rows desirable, whatever the headline's own label.
        made[f"{split}_kto"] = [kto_row(row, index % 2 == 0, rng) for index, row in enumerate(rows)]
    return made


def write_preferences(folder=OUTPUT_FOLDER, **settings):
    """Write the four .jsonl files into `folder`; returns {name: path}.

    Example:
        >>> write_preferences("/tmp/preferences", train_size=8, test_size=4)  # doctest: +SKIP
    """
    return write_rows(folder, make_preference_splits(**settings))


def load_preferences(split="train", kind="pairs"):
    """Rows of data/preferences: split "train" or "test", kind "pairs" (DPO, ORPO) or "kto".

    Example:
        >>> load_preferences("test")[0]["chosen"][0]["role"]
        'assistant'
    """
    return read_rows(DATA_FOLDER / "preferences" / f"{split}_{kind}.jsonl", "ftlib.demo.preferences")


def main():
    parser = argparse.ArgumentParser(description="Write the preference pairs and KTO rows of the headline world.")
    parser.add_argument("--train-size", type=int, default=256)
    parser.add_argument("--test-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    for name, path in write_preferences(train_size=arguments.train_size, test_size=arguments.test_size,
                                        seed=arguments.seed).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
