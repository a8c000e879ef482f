"""Text for continued pretraining: harbour logs, a kind of writing the tiny base model never read.

Run `python -m ftlib.demo.domain_text` to rewrite data/domain_text/: train.jsonl and test.jsonl hold harbour
log entries (ships, cargo, docks, weather: new words in a fixed register), and general.jsonl holds everyday
text of the kind the base was pretrained on (ftlib.demo.corpus), to measure how much continued pretraining
makes the model forget. Rows are {"text": ...}. The test split's ships never appear in the train split.
Same seed, same rows.
"""

import argparse
import random

from ftlib.demo import CHECKOUT_DATA, DATA_FOLDER, read_rows, write_rows
from ftlib.demo.corpus import everyday_text, filler_text
from ftlib.demo.world import REGIONS

OUTPUT_FOLDER = CHECKOUT_DATA / "domain_text"  # written into the checkout; a wheel ships a copy

SHIP_FIRST = ["Sea", "North", "Silver", "Amber", "Iron", "Blue", "Swift", "Morning", "Grey", "Calm", "Red", "Bright"]
SHIP_SECOND = ["Heron", "Gull", "Star", "Lantern", "Anchor", "Wave", "Crown", "Pearl", "Comet", "Otter", "Reed"]
CARGO = ["tea", "grain", "timber", "copper", "salt", "wool", "coal", "rice", "olive oil", "cotton"]
DOCKS = ["the north dock", "the east pier", "berth four", "the old quay", "the coal wharf", "berth nine"]
WEATHER = ["a calm sea", "a light westerly wind", "heavy fog", "rain from the south", "a rising swell"]
LOG_LINES = [
    "The {ship} arrived at {dock} with {count} crates of {cargo} from {region}.",
    "The {ship} left {dock} for {region} under {weather}.",
    "Pilot boarded the {ship} at the harbour mouth; {weather} slowed the approach.",
    "Customs cleared {count} crates of {cargo} from the {ship} at {dock}.",
    "The {ship} took on fresh water and {count} sacks of {cargo} at {dock}.",
    "Harbour master held the {ship} at anchor until {weather} passed.",
]


def ship_names():
    """Every ship name, in a fixed order. Example: `ship_names()[0]  # 'Sea Heron'`."""
    return [f"{first} {second}" for first in SHIP_FIRST for second in SHIP_SECOND]


def log_entry(ships, rng):
    """A harbour log entry: a watch time and two to four log lines.

    Example:
        >>> log_entry(["Sea Heron"], random.Random(0)).startswith("Harbour log")
        True
    """
    lines = [f"Harbour log, {rng.choice(['first', 'second', 'third'])} watch."]
    for _ in range(rng.randrange(2, 5)):
        lines.append(rng.choice(LOG_LINES).format(
            ship=rng.choice(ships), dock=rng.choice(DOCKS), count=rng.randrange(2, 90), cargo=rng.choice(CARGO),
            region=rng.choice(REGIONS), weather=rng.choice(WEATHER)))
    return " ".join(lines)


def make_domain_splits(train_size=400, test_size=40, general_size=40, seed=0):
    """{"train", "test", "general"}: lists of {"text": ...} rows.

    Example:
        >>> splits = make_domain_splits(train_size=4, test_size=2, general_size=2)
        >>> [len(splits[name]) for name in ("train", "test", "general")]
        [4, 2, 2]
    """
    rng = random.Random(seed)
    ships = ship_names()
    rng.shuffle(ships)
    held_out, training = ships[:24], ships[24:]
    general_rng = random.Random(seed + 1)
    return {
        "train": [{"text": log_entry(training, rng)} for _ in range(train_size)],
        "test": [{"text": log_entry(held_out, rng)} for _ in range(test_size)],
        "general": [{"text": (everyday_text if index % 2 else filler_text)(general_rng)}
                    for index in range(general_size)],
    }


def write_domain_text(folder=OUTPUT_FOLDER, **settings):
    """Write train.jsonl, test.jsonl and general.jsonl into `folder`; returns {name: path}.

    Example:
        >>> write_domain_text("/tmp/domain_text", train_size=4, test_size=2)  # doctest: +SKIP
    """
    return write_rows(folder, make_domain_splits(**settings))


def load_domain_text(split="train"):
    """Rows of data/domain_text: "train", "test" (harbour logs) or "general" (everyday text).

    Example:
        >>> load_domain_text("test")[0]["text"].startswith("Harbour log")
        True
    """
    return read_rows(DATA_FOLDER / "domain_text" / f"{split}.jsonl", "ftlib.demo.domain_text")


def main():
    parser = argparse.ArgumentParser(description="Write harbour-log text for continued pretraining.")
    parser.add_argument("--train-size", type=int, default=400)
    parser.add_argument("--test-size", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    for name, path in write_domain_text(train_size=arguments.train_size, test_size=arguments.test_size,
                                        seed=arguments.seed).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
