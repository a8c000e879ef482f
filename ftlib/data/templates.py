"""Chat templates: how a conversation becomes one training string, and which part of it is trained.

A chat template is a small Jinja program that writes a list of {"role", "content"} messages as text
with the model's markers ("<|user|>", "### Response:", ...). A model only answers well in the
format it was trained in, so ftlib uses the tokenizer's own template when it has one, and otherwise
a built-in one chosen by name:

    >>> from ftlib.data.templates import template_names
    >>> template_names()
    ['alpaca', 'chatml', 'llama-3']

`render_segments` splits a rendered conversation into pieces the model only reads (system and user
turns, the markers before each reply) and pieces it learns to write (each assistant reply and the
end-of-turn marker after it), which is what response-only loss needs.
"""

import warnings

from ftlib.errors import FtlibError

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)

# Alpaca: a plain-text format that any base model can learn; a system message replaces the
# preamble, and a user message with an `input` (from Alpaca rows) gets the "### Input:" section.
ALPACA_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{{ messages[0]['content'] + '\n\n' }}{%- set turns = messages[1:] -%}"
    "{%- else -%}{{ '" + ALPACA_PREAMBLE + "\n\n' }}{%- set turns = messages -%}{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- if message['input'] is defined and message['input'] -%}"
    "{{ '### Instruction:\n' + message['instruction'] + '\n\n### Input:\n' + message['input'] + '\n\n' }}"
    "{%- else -%}{{ '### Instruction:\n' + message['content'] + '\n\n' }}{%- endif -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ '### Response:\n' + message['content'] + eos_token + '\n\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '### Response:\n' }}{%- endif -%}"
)

# ChatML (Qwen, many community fine-tunes): every turn closes with <|im_end|>.
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)

# Llama 3 style: header tokens around the role, every turn closes with <|eot_id|>.
LLAMA3_TEMPLATE = (
    "{%- if bos_token -%}{{ bos_token }}{%- endif -%}"
    "{%- for message in messages -%}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif -%}"
)

BUILT_IN_TEMPLATES = {"alpaca": ALPACA_TEMPLATE, "chatml": CHATML_TEMPLATE, "llama-3": LLAMA3_TEMPLATE}
_ALIASES = {"llama3": "llama-3", "llama_3": "llama-3", "llama-3.1": "llama-3", "im_start": "chatml"}

_SENTINEL = "ftlib-sentinel-reply"  # text no template contains, to find what follows a reply


def template_names():
    """The built-in template names, for `format_dataset(..., template=name)`.

    Example:
        >>> "chatml" in template_names()
        True
    """
    return sorted(BUILT_IN_TEMPLATES)


def resolve_template(tokenizer, template=None):
    """Return (jinja_source, description) for `template`.

    `template` is None or "auto" (the tokenizer's own template, else "alpaca"), "tokenizer" (the
    tokenizer's own, required), a built-in name, or a Jinja template string.

    Example:
        >>> source, description = resolve_template(tokenizer, "chatml")
        >>> description
        "built-in template 'chatml'"
    """
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):  # some tokenizers keep several named templates
        own = own.get("default") or next(iter(own.values()), None)
    if template is None or template == "auto":
        if own:
            return own, "the tokenizer's chat template"
        # Base models have no template; Alpaca is plain text that needs no new tokens.
        return ALPACA_TEMPLATE, "built-in template 'alpaca' (the tokenizer has no chat template)"
    if not isinstance(template, str):
        raise FtlibError(
            f"template must be a name or a Jinja string, got {type(template).__name__}: "
            f"try template=None (the tokenizer's own) or one of {template_names()}"
        )
    if template == "tokenizer":
        if not own:
            raise FtlibError(
                "template='tokenizer' but this tokenizer has no chat template: pick a built-in one, "
                f"e.g. template='chatml' (known: {', '.join(template_names())})"
            )
        return own, "the tokenizer's chat template"
    if "{{" in template or "{%" in template:
        return template, "a custom Jinja template"
    name = _ALIASES.get(template.lower(), template.lower())
    if name not in BUILT_IN_TEMPLATES:
        raise FtlibError(
            f"unknown template {template!r}: known templates are {', '.join(template_names())}; "
            "or pass template=None to use the tokenizer's own chat template, or a Jinja string"
        )
    return BUILT_IN_TEMPLATES[name], f"built-in template {name!r}"


def set_chat_template(tokenizer, template):
    """Make `tokenizer` use a built-in template, so `generate` formats prompts as training did.

    This changes the tokenizer you pass (it is the one explicit exception to "ftlib never modifies
    your objects"), and it leaves `eos_token` alone: see `end_of_turn_problem` for that.

    Example:
        >>> set_chat_template(tokenizer, "chatml")
        >>> tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
        '<|im_start|>user\\nHi<|im_end|>\\n'
    """
    source, _ = resolve_template(tokenizer, template)
    tokenizer.chat_template = source
    return tokenizer


def render(tokenizer, source, messages, add_generation_prompt=False):
    """Write `messages` as text with the Jinja template `source`.

    Example:
        >>> render(tokenizer, CHATML_TEMPLATE, [{"role": "user", "content": "Hi"}], True)
        '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
    """
    try:
        return tokenizer.apply_chat_template(
            messages, chat_template=source, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as error:  # Jinja errors carry the template's own message (e.g. a bad role)
        roles = ", ".join(message["role"] for message in messages)
        raise FtlibError(
            f"the chat template failed on a conversation with roles [{roles}]: {error}. "
            "Check the roles your template supports, or pick a built-in one with template='chatml'"
        ) from error


def end_of_turn_marker(tokenizer, source):
    """The text a template writes right after an assistant reply ("" when it writes nothing).

    Example:
        >>> end_of_turn_marker(tokenizer, CHATML_TEMPLATE)
        '<|im_end|>'
    """
    messages = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": _SENTINEL}]
    text = render(tokenizer, source, messages)
    return text[text.index(_SENTINEL) + len(_SENTINEL):].strip()


def end_of_turn_problem(tokenizer, source):
    """A sentence explaining a mismatch between the template's end of turn and EOS, or None.

    Generation stops at `tokenizer.eos_token`. If the template ends a reply with another marker
    (Llama 3's <|eot_id|> with EOS <|end_of_text|>, ChatML's <|im_end|> with EOS </s>), a model
    fine-tuned on it keeps talking after its answer. ftlib still ends every example with EOS.

    Example:
        >>> end_of_turn_problem(tokenizer, CHATML_TEMPLATE)  # when eos_token is "<|im_end|>"
    """
    marker = end_of_turn_marker(tokenizer, source)
    eos = tokenizer.eos_token
    if not marker or marker.endswith(eos):
        return None
    return (
        f"the chat template ends each assistant turn with {marker!r} but tokenizer.eos_token is "
        f"{eos!r}, so generation may not stop after an answer. ftlib appends {eos!r} after every "
        f"final answer; to stop at every turn, set tokenizer.eos_token = {marker!r} before "
        "formatting (and make sure the model's generation_config.eos_token_id includes it)"
    )


def render_segments(tokenizer, source, messages, marker=None):
    """Split a conversation into [(text, trained)] pieces; the last trained piece ends with EOS.

    Returns (segments, prompt): `prompt` is the text up to where the final reply starts (the
    conversation without it, with the generation prompt), what `generate` would be fed.

    Each reply's trained text starts where "history + generation prompt" ends and runs to the end
    of the reply and its end-of-turn marker. What the template writes after that (a newline between
    turns) stays untrained, so the model learns to stop right at the marker. `marker` is
    end_of_turn_marker(tokenizer, source), worked out here when not given.

    Example:
        >>> segments, prompt = render_segments(tokenizer, CHATML_TEMPLATE, messages)
        >>> [trained for _, trained in segments]
        [False, True]
    """
    full = render(tokenizer, source, messages)
    marker = end_of_turn_marker(tokenizer, source) if marker is None else marker
    segments, cursor, prompt = [], 0, ""
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, source, messages[:index], add_generation_prompt=True)
        after = render(tokenizer, source, messages[: index + 1])
        content = message["content"]
        if after.startswith(before) and full.startswith(after) and len(before) >= cursor:
            start, found = len(before), after.rfind(content, len(before))
        else:  # the template rewrites history (e.g. drops old reasoning): find the reply itself
            start = found = full.find(content, cursor)
            if found < 0:
                raise FtlibError(
                    f"could not find assistant turn {index} in the rendered conversation: the "
                    "template changes the reply text. Use a built-in template, e.g. template='chatml'"
                )
        if found < 0:  # the template reshapes the reply (e.g. trims it): train all it wrote
            end = len(after.rstrip())
        else:  # the reply, then the end-of-turn marker if one follows; the rest is template glue
            end = found + len(content)
            gap = len(full[end:]) - len(full[end:].lstrip(" "))
            if marker and full[end + gap:].startswith(marker):
                end += gap + len(marker)
        reply = full[start:end]
        segments.append((full[cursor:start], False))
        segments.append((reply, True))
        prompt = full[:start]
        cursor = start + len(reply)
    # Text after the final reply is only whitespace in sane templates; EOS must come last.
    last_text, _ = segments[-1]
    if not last_text.endswith(tokenizer.eos_token):
        segments[-1] = (last_text + tokenizer.eos_token, True)
    return [(text, trained) for text, trained in segments if text], prompt


def warn_end_of_turn(tokenizer, source):
    """Warn (once per call) when the template's end of turn and EOS disagree; see end_of_turn_problem."""
    problem = end_of_turn_problem(tokenizer, source)
    if problem:
        warnings.warn(problem, stacklevel=3)
    return problem
