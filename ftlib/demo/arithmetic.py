"""A verifiable task for GRPO: small arithmetic word problems about the demo world's companies.

Run `python -m ftlib.demo.arithmetic` to rewrite data/arithmetic/{train,test}.jsonl. A row:

    {"question": "Velex Foods sold 3 phones on Monday and 4 more on Tuesday. How many phones did it sell?
                  Put the number in <answer></answer>.",
     "answer": "7", "solution": "3 + 4 = 7. <answer>7</answer>"}

The answer is a number a program can check (ftlib.training.rewards.exact_answer_reward), so a model can be
rewarded for being right without a judge. `solution` is a worked answer in the expected format, for a short
SFT warm-up on the format before GRPO. The held-out rows are about companies and products that never appear
in the training rows. The output is the same for the same seed.
"""

import argparse
import random

from ftlib.demo import CHECKOUT_DATA, DATA_FOLDER, read_rows, write_rows
from ftlib.demo.world import PRODUCTS, company_names
from ftlib.errors import FtlibError

SPLITS = ("train", "test")
OUTPUT_FOLDER = CHECKOUT_DATA / "arithmetic"  # written into the checkout; a wheel ships a copy
FORMAT_REQUEST = " Put the number in <answer></answer>."
HELD_OUT_PRODUCTS = 3  # products only the held-out rows mention
LARGEST = 9  # both numbers of a problem are 1-9: sums to 18, differences to 8, within a tiny model's reach
# Templates: (question, operator). Slots: {company}, {product}, {first}, {second}.
PROBLEMS = [
    ("{company} sold {first} {product}s on Monday and {second} more on Tuesday. How many {product}s did it sell?", "+"),
    ("{company} had {first} {product}s and made {second} more. How many {product}s does it have now?", "+"),
    ("{company} had {first} {product}s and sold {second} of them. How many {product}s are left?", "-"),
    ("{company} ordered {first} {product}s and {second} were returned. How many {product}s did it keep?", "-"),
]


def make_problem(company, product, rng):
    """One row: a word problem, its number answer, and a worked solution in the expected format.

    Example:
        >>> row = make_problem("Velex Foods", "phone", random.Random(0))
        >>> row["solution"].endswith(f"<answer>{row['answer']}</answer>")
        True
    """
    template, operator = rng.choice(PROBLEMS)
    first, second = rng.randint(1, LARGEST), rng.randint(1, LARGEST)
    if operator == "-" and second >= first:  # no negative or zero stock
        first, second = max(first, second) + 1, min(first, second)
    result = first + second if operator == "+" else first - second
    question = template.format(company=company, product=product, first=first, second=second) + FORMAT_REQUEST
    solution = f"{first} {operator} {second} = {result}. <answer>{result}</answer>"
    return {"question": question, "answer": str(result), "solution": solution}


def make_splits(train_size=512, test_size=64, seed=0):
    """{"train": rows, "test": rows}; the test rows' companies and products never appear in the training rows.

    Example:
        >>> splits = make_splits(train_size=8, test_size=4)
        >>> len(splits["train"]), len(splits["test"])
        (8, 4)
    """
    rng = random.Random(seed)
    companies = company_names(count=60, seed=seed)
    held_out_companies, companies = companies[:12], companies[12:]
    products = list(PRODUCTS)
    rng.shuffle(products)
    held_out_products, products = products[:HELD_OUT_PRODUCTS], products[HELD_OUT_PRODUCTS:]
    seen = set()

    def rows(count, names, things):
        made = []
        while len(made) < count:
            row = make_problem(rng.choice(names), rng.choice(things), rng)
            if row["question"] not in seen:
                seen.add(row["question"])
                made.append(row)
        return made

    return {"train": rows(train_size, companies, products), "test": rows(test_size, held_out_companies, held_out_products)}


def load_arithmetic(split="train"):
    """Rows of the arithmetic task: {"question", "answer" (a number as text), "solution" (worked, in the format)}.

    Example:
        >>> load_arithmetic("test")[0]["answer"].isdigit()
        True
    """
    if split not in SPLITS:
        raise FtlibError(f'unknown arithmetic split {split!r}: use "train" or "test"')
    return read_rows(DATA_FOLDER / "arithmetic" / f"{split}.jsonl", "ftlib.demo.arithmetic")


def write_splits(folder=OUTPUT_FOLDER, **settings):
    """Write train.jsonl and test.jsonl into `folder`; returns {split: path}.

    Example:
        >>> write_splits("/tmp/arithmetic", train_size=8, test_size=4)  # doctest: +SKIP
    """
    return write_rows(folder, make_splits(**settings))


def main():
    parser = argparse.ArgumentParser(description="Write the arithmetic task's train and test splits.")
    parser.add_argument("--train-size", type=int, default=512)
    parser.add_argument("--test-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folder", default=str(OUTPUT_FOLDER))
    arguments = parser.parse_args()
    for split, path in write_splits(arguments.folder, train_size=arguments.train_size, test_size=arguments.test_size,
                                    seed=arguments.seed).items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
