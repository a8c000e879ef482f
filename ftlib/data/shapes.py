"""Data shapes: recognise how rows are laid out and turn each row into one normalised example.

Shapes (`format_dataset(..., shape=name)`; detected from the first row when not given):

| shape | columns |
| --- | --- |
| "qa" | question/answer, prompt/response, input/output or instruction/output (or your own names) |
| "alpaca" | instruction, output, optional input (may be empty) |
| "sharegpt" | conversations: [{"from": "human"/"gpt"/"system", "value": ...}, ...] |
| "messages" | messages: [{"role": "user"/"assistant"/"system", "content": ...}, ...] (OpenAI style) |
| "prompt_completion" | prompt, completion: plain text joined as is, no chat template |
| "text" | text: raw documents or code, for completion-style / continued pretraining |

Every example becomes {"messages": [...]}, {"prompt", "completion"} or {"text"}:

    >>> spec = choose_shape([{"question": "2+2?", "answer": "4"}])
    >>> to_example({"question": "2+2?", "answer": "4"}, spec, "row 0")
    {'messages': [{'role': 'user', 'content': '2+2?'}, {'role': 'assistant', 'content': '4'}]}
"""

from ftlib.errors import FtlibError

QA_COLUMN_PAIRS = (("question", "answer"), ("prompt", "response"), ("input", "output"), ("instruction", "output"))
CONVERSATION_COLUMNS = ("messages", "conversations", "conversation")
SHAPES = ("qa", "alpaca", "sharegpt", "messages", "prompt_completion", "text")
SHAPE_ALIASES = {
    "question_answer": "qa", "openai": "messages", "chat": "messages", "conversations": "messages",
    "completion": "prompt_completion", "raw": "text", "raw_text": "text",
}
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "model": "assistant"}
MESSAGE_ROLES = {"system": "system", "user": "user", "assistant": "assistant"}

_SHAPES_TRIED = (
    "qa (question/answer, prompt/response, input/output, instruction/output), "
    "alpaca (instruction, input, output), sharegpt (conversations of from/value), "
    "messages (messages of role/content), prompt_completion (prompt, completion), text (text)"
)


class ShapeSpec:
    """The chosen shape and the columns it reads."""

    def __init__(self, shape, columns):
        self.shape = shape
        self.columns = columns  # e.g. {"question": "headline", "answer": "label"}

    def describe(self):
        return f"{self.shape!r} (columns {', '.join(dict.fromkeys(self.columns.values()))})"


def _as_list(value):
    """Lists stay lists; numpy arrays (pandas reading Parquet) become lists."""
    return value.tolist() if hasattr(value, "tolist") and not isinstance(value, (str, bytes)) else value


def _is_turn_list(value, key):
    value = _as_list(value)
    return isinstance(value, (list, tuple)) and bool(value) and isinstance(value[0], dict) and key in value[0]


def detect_shape(row):
    """The ShapeSpec a row's columns fit, or None.

    Example:
        >>> detect_shape({"instruction": "Add", "input": "2 and 2", "output": "4"}).shape
        'alpaca'
    """
    keys = set(row)
    for column in CONVERSATION_COLUMNS:
        if column in keys:
            shape = "sharegpt" if _is_turn_list(row[column], "from") else "messages"
            return ShapeSpec(shape, {"messages": column})
    if {"instruction", "output"} <= keys:
        return ShapeSpec("alpaca", {"instruction": "instruction", "input": "input", "output": "output"})
    if {"prompt", "completion"} <= keys:
        return ShapeSpec("prompt_completion", {"prompt": "prompt", "completion": "completion"})
    for question, answer in QA_COLUMN_PAIRS:
        if {question, answer} <= keys:
            return ShapeSpec("qa", {"question": question, "answer": answer})
    if "text" in keys:
        return ShapeSpec("text", {"text": "text"})
    return None


def choose_shape(rows, shape=None, question_column=None, answer_column=None, text_column=None):
    """Pick the shape from the arguments or the first row; raise FtlibError naming what was found.

    Example:
        >>> choose_shape([{"headline": "...", "label": "positive"}],
        ...              question_column="headline", answer_column="label").describe()
        "'qa' (columns headline, label)"
    """
    first = rows[0]
    found = ", ".join(sorted(first)) or "none"
    if {"input_ids", "labels"} <= set(first):
        raise FtlibError(
            "this data is already formatted (it has input_ids and labels): pass it to train() as it is, "
            "or call format_dataset on the original rows to format them differently"
        )
    if shape is not None:
        if not isinstance(shape, str) or SHAPE_ALIASES.get(shape, shape) not in SHAPES:
            raise FtlibError(f"unknown shape {shape!r}: use one of {', '.join(SHAPES)} (or shape=None to detect it)")
        shape = SHAPE_ALIASES.get(shape, shape)
    if text_column and (question_column or answer_column):
        raise FtlibError(
            "text_column names raw text for completion training, and question_column/answer_column name "
            "question/answer pairs: pass one kind, e.g. format_dataset(data, tokenizer, text_column='body')"
        )
    if text_column and shape not in (None, "text"):
        raise FtlibError(f"text_column belongs to shape='text', not shape={shape!r}: drop one of them")
    if question_column or answer_column:
        if shape not in (None, "qa"):
            raise FtlibError(
                f"question_column/answer_column belong to shape='qa', not shape={shape!r}: drop one of them"
            )
        spec = ShapeSpec("qa", {"question": question_column or "question", "answer": answer_column or "answer"})
    elif text_column:
        spec = ShapeSpec("text", {"text": text_column})
    elif shape is None:
        spec = detect_shape(first)
        if spec is None:
            raise FtlibError(
                f"could not tell the shape of the data from row 0's columns ({found}). Shapes tried: "
                f"{_SHAPES_TRIED}. Rename your columns, or name them, e.g. "
                "format_dataset(data, tokenizer, question_column='headline', answer_column='label')"
            )
        return spec
    else:
        spec = _spec_for(shape, first)
    missing = [column for role, column in spec.columns.items() if role != "input" and column not in first]
    if missing:
        raise FtlibError(
            f"shape {spec.shape!r} needs the column(s) {', '.join(missing)}, but row 0 has only ({found}): "
            "rename the columns, pass question_column=/answer_column=/text_column=, or pick another shape"
        )
    return spec


def _spec_for(shape, first):
    if shape == "qa":
        for question, answer in QA_COLUMN_PAIRS:
            if {question, answer} <= set(first):
                return ShapeSpec("qa", {"question": question, "answer": answer})
        return ShapeSpec("qa", {"question": "question", "answer": "answer"})
    if shape in ("messages", "sharegpt"):
        default = "messages" if shape == "messages" else "conversations"
        column = next((name for name in CONVERSATION_COLUMNS if name in first), default)
        return ShapeSpec(shape, {"messages": column})
    if shape == "alpaca":
        return ShapeSpec("alpaca", {"instruction": "instruction", "input": "input", "output": "output"})
    if shape == "prompt_completion":
        return ShapeSpec("prompt_completion", {"prompt": "prompt", "completion": "completion"})
    return ShapeSpec("text", {"text": "text"})


def field_text(row, column, place, allow_empty=False):
    """row[column] as a non-empty string, or a FtlibError naming the row and column."""
    value = row.get(column)
    if value is None:
        raise FtlibError(f"{place}: column {column!r} is missing or empty (None): fill it in or remove the row")
    if not isinstance(value, str):
        raise FtlibError(
            f"{place}: column {column!r} must be text, got {type(value).__name__} {value!r:.60}: "
            f"convert it first, e.g. row[{column!r}] = str(row[{column!r}])"
        )
    if not allow_empty and not value.strip():
        raise FtlibError(f"{place}: column {column!r} is empty: fill it in or remove the row")
    return value


def _mismatch(row, spec, place):
    """Raise the right error for a row that lacks the chosen shape's columns."""
    other = detect_shape(row)
    if other is not None and (other.shape != spec.shape or other.columns != spec.columns):
        raise FtlibError(
            f"mixed shapes: row 0 is {spec.describe()} but {place} looks like {other.describe()}. "
            "Format each shape separately (format_dataset on each part, then datasets.concatenate_datasets) "
            "or rename the columns so every row has the same ones"
        )


def to_example(row, spec, place, system_prompt=None):
    """Normalise one row of the chosen shape; raise FtlibError naming the place and the fix."""
    columns = spec.columns
    required = [column for role, column in columns.items() if role != "input"]
    if any(row.get(column) is None for column in required):
        _mismatch(row, spec, place)
    if spec.shape == "text":
        return {"text": field_text(row, columns["text"], place)}
    if spec.shape == "prompt_completion":
        prompt, completion = _as_list(row.get(columns["prompt"])), _as_list(row.get(columns["completion"]))
        if isinstance(prompt, (list, tuple)) and isinstance(completion, (list, tuple)):  # conversational
            turns = list(prompt) + list(completion)
            messages = _conversation(turns, place, columns["prompt"], "role", "content", MESSAGE_ROLES, system_prompt)
            return {"messages": messages}
        return {
            "prompt": field_text(row, columns["prompt"], place),
            "completion": field_text(row, columns["completion"], place),
        }
    if spec.shape in ("messages", "sharegpt"):
        turns = row.get(columns["messages"])
        if spec.shape == "messages":
            keys = ("role", "content", MESSAGE_ROLES)
        else:
            keys = ("from", "value", SHAREGPT_ROLES)
        return {"messages": _conversation(turns, place, columns["messages"], *keys, system_prompt)}
    system = row.get("system") if isinstance(row.get("system"), str) and row.get("system").strip() else system_prompt
    messages = [{"role": "system", "content": system}] if system else []
    if spec.shape == "alpaca":
        instruction = field_text(row, columns["instruction"], place)
        has_input = row.get(columns["input"]) is not None
        extra = field_text(row, columns["input"], place, allow_empty=True) if has_input else ""
        user = {"role": "user", "content": f"{instruction}\n\n{extra}" if extra.strip() else instruction}
        if extra.strip():  # the alpaca template writes these as "### Instruction:" and "### Input:"
            user.update(instruction=instruction, input=extra)
        messages += [user, {"role": "assistant", "content": field_text(row, columns["output"], place)}]
    else:
        messages += [
            {"role": "user", "content": field_text(row, columns["question"], place)},
            {"role": "assistant", "content": field_text(row, columns["answer"], place)},
        ]
    return {"messages": messages}


def _content(turn, content_key, where):
    content = turn.get(content_key)
    if isinstance(content, (list, tuple)):  # OpenAI content parts: keep the text ones
        parts = [part.get("text") for part in content if isinstance(part, dict) and part.get("type") == "text"]
        content = "".join(part for part in parts if isinstance(part, str)) if parts else None
    if not isinstance(content, str) or not content.strip():
        raise FtlibError(
            f"{where}: {content_key!r} must be non-empty text, got {content!r:.60}: fill it in or drop the turn"
        )
    return content


def _conversation(turns, place, column, role_key, content_key, roles, system_prompt):
    turns = _as_list(turns)
    if not isinstance(turns, (list, tuple)) or not turns:
        raise FtlibError(
            f"{place}: column {column!r} must be a non-empty list of turns such as "
            f'{{"{role_key}": "user", "{content_key}": "..."}}, got {turns!r:.60}'
        )
    messages = []
    for number, turn in enumerate(turns):
        where = f"{place}, {column!r} turn {number}"
        if not isinstance(turn, dict) or role_key not in turn:
            raise FtlibError(
                f"{where}: each turn must be a dict with {role_key!r} and {content_key!r}, got {turn!r:.80}"
            )
        role = roles.get(str(turn[role_key]).lower())
        if role is None:
            raise FtlibError(f"{where}: unknown role {turn[role_key]!r}: use one of {', '.join(sorted(roles))}")
        messages.append({"role": role, "content": _content(turn, content_key, where)})
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    _check_order(messages, place, column)
    return messages


def _check_order(messages, place, column):
    """Roles must go [system,] user, assistant, user, assistant, ... and end with the assistant."""
    offset = 1 if messages[0]["role"] == "system" else 0
    for index, message in enumerate(messages[offset:], start=offset):
        expected = "user" if (index - offset) % 2 == 0 else "assistant"
        if message["role"] != expected:
            previous = messages[index - 1]["role"] if index else "the start"
            raise FtlibError(
                f"{place}, {column!r}: roles out of order at turn {index}: {message['role']!r} after "
                f"{previous!r}. Conversations must go [system,] user, assistant, user, assistant, ...: "
                "merge repeated turns, add the missing reply, or move the system turn first"
            )
    if messages[-1]["role"] != "assistant":
        raise FtlibError(
            f"{place}, {column!r}: the conversation ends with a {messages[-1]['role']!r} turn, so there is "
            "no reply to learn from: add the assistant's reply or drop the last turn"
        )
