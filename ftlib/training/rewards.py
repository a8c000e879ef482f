"""Ready reward functions for GRPO: answers in a declared format, checked by a program instead of a judge.

Each takes what TRL's GRPOTrainer passes (`completions`, plus the dataset's other columns by name, e.g.
`answer`) and returns one float per completion. The expected format is a final answer between tags:

    ... 3 + 4 = 7. <answer>7</answer>

    format_reward         1.0 when the completion holds exactly one <answer>...</answer> with something inside; else 0.0
    exact_answer_reward   1.0 when the number inside the tags equals the row's `answer` after normalising; else 0.0
    close_answer_reward   partial credit: 1.0 for the exact number, falling to 0.0 as the number gets further away
    length_guard(n)       0.0 up to n words, then down to -1.0 at twice n: stops completions growing to the limit

Pass several together; GRPO adds them up (`train(..., method="grpo", reward_functions=[format_reward,
exact_answer_reward])`). A completion is a string, or a chat completion (a list of messages) whose last
message's content is read.
"""

import math
import re

from ftlib.errors import FtlibError

ANSWER_OPENING, ANSWER_CLOSING = "<answer>", "</answer>"
_TAGGED = re.compile(re.escape(ANSWER_OPENING) + r"(.*?)" + re.escape(ANSWER_CLOSING), re.DOTALL)
# A number as people write it: an optional sign, digits with optional thousands commas, an optional decimal part.
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")


def completion_text(completion):
    """The text of one completion: the string itself, or the content of a chat completion's last message.

    Example:
        >>> completion_text([{"role": "assistant", "content": "<answer>7</answer>"}])
        '<answer>7</answer>'
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, (list, tuple)) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content") or "")
    if isinstance(completion, dict):
        return str(completion.get("content") or "")
    raise FtlibError(f"a completion must be text or a list of chat messages, got {type(completion).__name__}: "
                     "pass reward functions the completions GRPO generates")


def tagged_answer(text):
    """What sits between <answer> and </answer> (stripped), or None when the tags are missing or repeated.

    Example:
        >>> tagged_answer("so 7. <answer> 7 </answer>")
        '7'
    """
    found = _TAGGED.findall(text)
    return found[0].strip() if len(found) == 1 else None


def normalise_number(text):
    """The one number `text` states, as a float, or None: "1,200" -> 1200.0, "$7.50" -> 7.5, "+3" -> 3.0, "7." -> 7.0.

    Currency signs, thousands commas, spaces and a trailing full stop are ignored; text holding no number or
    two different numbers gives None (an answer must commit to one).

    Example:
        >>> normalise_number(" 1,200 ")
        1200.0
    """
    if text is None:
        return None
    numbers = {float(match.replace(",", "")) for match in _NUMBER.findall(str(text))}
    return numbers.pop() if len(numbers) == 1 else None


def format_reward(completions, **kwargs):
    """1.0 for each completion whose final answer sits in exactly one pair of <answer></answer> tags, with text inside; else 0.0.

    Range 0.0-1.0. It rewards the shape, not the truth: the first thing a model learns, and the signal that lets the
    exact-answer reward be read at all.

    Example:
        >>> format_reward(["<answer>7</answer>", "7", "<answer></answer>"])
        [1.0, 0.0, 0.0]
    """
    return [1.0 if tagged_answer(completion_text(completion)) else 0.0 for completion in completions]


def exact_answer_reward(completions, answer, **kwargs):
    """1.0 for each completion whose tagged number equals the row's `answer` after normalising both; else 0.0.

    Range 0.0-1.0. "7", "7.0", " 7 " and "$7" all match 7; an answer outside the tags, or two numbers inside
    them, earns nothing. `answer` is the dataset's "answer" column (TRL passes every extra column by name).

    Example:
        >>> exact_answer_reward(["<answer>1,200</answer>", "<answer>12</answer>"], answer=["1200", "1200"])
        [1.0, 0.0]
    """
    rewards = []
    for completion, expected in zip(completions, _per_completion(answer, completions)):
        said, wanted = normalise_number(tagged_answer(completion_text(completion))), normalise_number(expected)
        rewards.append(1.0 if said is not None and wanted is not None and math.isclose(said, wanted) else 0.0)
    return rewards


def close_answer_reward(completions, answer, **kwargs):
    """Partial credit for a tagged number near the row's `answer`: 1 / (1 + distance), so 1.0 exact, 0.5 one away.

    Range 0.0-1.0 (0.0 without a tagged number). Use it beside exact_answer_reward when every completion of a
    group scores the same (all wrong): nearer answers then score higher, and GRPO has a difference to learn from.

    Example:
        >>> close_answer_reward(["<answer>7</answer>", "<answer>8</answer>", "8"], answer=[7, 7, 7])
        [1.0, 0.5, 0.0]
    """
    rewards = []
    for completion, expected in zip(completions, _per_completion(answer, completions)):
        said, wanted = normalise_number(tagged_answer(completion_text(completion))), normalise_number(expected)
        rewards.append(0.0 if said is None or wanted is None else 1.0 / (1.0 + abs(said - wanted)))
    return rewards


def length_guard(max_words=64):
    """A reward function: 0.0 up to `max_words` words, falling linearly to -1.0 at twice as many (and below it no further).

    Range -1.0-0.0. It penalises rambling before completions reach max_completion_length, where they are cut off
    without an answer. Set max_words below the completion limit (about 0.75 words a token in English).

    Example:
        >>> guard = length_guard(max_words=3)
        >>> guard(["one two three", "one two three four five six"])
        [0.0, -1.0]
    """
    if not isinstance(max_words, int) or isinstance(max_words, bool) or max_words < 1:
        raise FtlibError(f"length_guard needs max_words, a whole number of at least 1, got {max_words!r}: "
                         "e.g. length_guard(max_words=64)")

    def reward(completions, **kwargs):
        lengths = [len(completion_text(completion).split()) for completion in completions]
        return [max(-1.0, (max_words - length) / max_words) if length > max_words else 0.0 for length in lengths]

    reward.__name__ = "length_guard"  # GRPO logs each reward under its function's name: rewards/length_guard/mean
    return reward


def _per_completion(values, completions):
    """The reference column, one value per completion (TRL passes one per completion already; a single value is repeated)."""
    if isinstance(values, (str, int, float)):
        return [values] * len(completions)
    values = list(values)
    if len(values) != len(completions):
        raise FtlibError(f"got {len(values)} reference answers for {len(completions)} completions: pass one answer "
                         "per completion (GRPO does this from the dataset's 'answer' column)")
    return values
