"""Ollama: a Modelfile whose TEMPLATE and stop tokens come from the tokenizer's own chat template.

    >>> print(ollama_modelfile(tokenizer))  # TEMPLATE and stops from the chat template
"""

import json
from pathlib import Path

from ftlib.errors import FtlibError
from ftlib.export.gguf import write_gguf


def chat_template_parts(tokenizer):
    """Split the tokenizer's chat template into the literal text around each role's content.

    Found by rendering small conversations with marker contents, then checked: the parts must
    rebuild the template's own output for several conversations, or this raises FtlibError.

    Example:
        >>> chat_template_parts(tokenizer)["assistant"]  # doctest: +SKIP
        ('<|assistant|>\\n', '<|end|>')
    """
    if not getattr(tokenizer, "chat_template", None):
        raise FtlibError(
            "method='ollama' needs a chat template to write the Modelfile's TEMPLATE, and this tokenizer has "
            "none: set tokenizer.chat_template (the format you trained on), or save with method='merged_16bit'"
        )
    system, user, reply, user2 = "ftlib-sys-q7", "ftlib-user-q7", "ftlib-reply-q7", "ftlib-again-q7"

    def render(messages, add_generation_prompt=False):
        return tokenizer.apply_chat_template(
            [{"role": role, "content": content} for role, content in messages],
            tokenize=False, add_generation_prompt=add_generation_prompt,
        )

    failure = FtlibError(
        "could not translate this tokenizer's chat template into an Ollama TEMPLATE (it renders turns "
        "differently depending on their position): save with method='merged_16bit' and write the Modelfile "
        "by hand (https://github.com/ollama/ollama/blob/main/docs/template.md)"
    )
    try:
        one = render([("user", user)])
        prompt = render([("user", user)], add_generation_prompt=True)
        two = render([("user", user), ("assistant", reply)])
        three = render([("user", user), ("assistant", reply), ("user", user2)])
    except Exception as error:
        raise failure from error
    if not (prompt.startswith(one) and two.startswith(one) and three.startswith(two)):
        raise failure
    generation_prompt = prompt[len(one):]
    assistant = tuple(two[len(one):].split(reply))
    user_turn = tuple(three[len(two):].split(user2))
    if len(assistant) != 2 or len(user_turn) != 2 or not one.endswith(user_turn[0] + user + user_turn[1]):
        raise failure
    head = one[: len(one) - len(user_turn[0] + user + user_turn[1])]
    parts = {"head": head, "user": user_turn, "assistant": assistant, "generation_prompt": generation_prompt,
             "system": None, "default_system": None}
    try:
        with_system = render([("system", system), ("user", user)])
        user_text = user_turn[0] + user + user_turn[1]
        if with_system.endswith(user_text):
            system_turn = tuple(with_system[: len(with_system) - len(user_text)].split(system))
            if len(system_turn) == 2 and system_turn[0].startswith(head):
                parts["system"] = (system_turn[0][len(head):], system_turn[1])
            elif (len(system_turn) == 2 and len(head) >= len(system_turn[0]) + len(system_turn[1])
                  and head.startswith(system_turn[0]) and head.endswith(system_turn[1])):
                # The template writes a default system turn when the conversation has none (SmolLM2, Qwen).
                parts["system"] = system_turn
                parts["default_system"] = head[len(system_turn[0]): len(head) - len(system_turn[1])]
                parts["head"] = ""
    except Exception:  # templates that reject system messages (some do) simply get no system branch
        pass
    checks = [[("user", "Hi")], [("user", "a"), ("assistant", "b"), ("user", "c")]]
    if parts["system"]:
        checks.append([("system", "s"), ("user", "a"), ("assistant", "b"), ("user", "c")])
    for messages in checks:
        for add in (False, True):
            expected = render(messages, add_generation_prompt=add)
            if render_with_parts(parts, [{"role": r, "content": c} for r, c in messages], add) != expected:
                raise failure
    return parts


def render_with_parts(parts, messages, add_generation_prompt=True):
    """Render a conversation from `chat_template_parts` the way the Ollama TEMPLATE does.

    Example:
        >>> render_with_parts(parts, [{"role": "user", "content": "Hi"}])  # doctest: +SKIP
    """
    text = parts["head"]
    if parts.get("default_system") is not None and (not messages or messages[0]["role"] != "system"):
        text += parts["system"][0] + parts["default_system"] + parts["system"][1]
    for message in messages:
        prefix, suffix = parts[message["role"]]
        text += prefix + message["content"] + suffix
    if add_generation_prompt and messages[-1]["role"] != "assistant":
        text += parts["generation_prompt"]
    return text


def _go_string(text):
    # A Go template string literal; JSON's escapes (\n, \", \\, \uXXXX) are valid Go escapes too.
    return "{{ " + json.dumps(text, ensure_ascii=False) + " }}"


def ollama_stops(tokenizer, parts):
    """Stop strings for Ollama: the end-of-turn marker, EOS, and the start of a user turn."""
    stops = []
    for text in (parts["assistant"][1].strip(), tokenizer.eos_token, parts["user"][0].strip()):
        if text and text not in stops:
            stops.append(text)
    return stops


def ollama_modelfile(tokenizer, source=".", system_prompt=None):
    """A Modelfile whose TEMPLATE and stops come from the tokenizer's chat template.

    Example:
        >>> print(ollama_modelfile(tokenizer))  # doctest: +SKIP
    """
    parts = chat_template_parts(tokenizer)
    head = parts["head"]
    bos = getattr(tokenizer, "bos_token", None)
    adds_bos = bos is not None and tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]
    if adds_bos and head.startswith(bos):
        head = head[len(bos):]  # the runtime adds BOS itself, as the tokenizer does; don't write it twice
    system_prefix = parts["system"][0] if parts["system"] else None
    if parts["default_system"] is not None:
        if adds_bos and system_prefix.startswith(bos):
            system_prefix = system_prefix[len(bos):]
        # The same default system turn the chat template writes when the conversation starts without one.
        head = ('{{- if or (eq (len .Messages) 0) (ne (index .Messages 0).Role "system") }}'
                + _go_string(system_prefix + parts["default_system"] + parts["system"][1]) + "{{ end }}")
    elif head:
        head = _go_string(head)
    branches = []
    if parts["system"]:
        branches.append('if eq .Role "system" }}' + _go_string(system_prefix) + "{{ .Content }}"
                        + _go_string(parts["system"][1]))
    branches.append('if eq .Role "user" }}' + _go_string(parts["user"][0]) + "{{ .Content }}"
                    + _go_string(parts["user"][1]) + "{{ if $last }}" + _go_string(parts["generation_prompt"])
                    + "{{ end }}")
    branches.append('if eq .Role "assistant" }}' + _go_string(parts["assistant"][0]) + "{{ .Content }}"
                    + "{{ if not $last }}" + _go_string(parts["assistant"][1]) + "{{ end }}")
    body = "\n{{- else ".join(["{{- " + branches[0]] + branches[1:])
    template = (
        head
        + "\n{{- range $i, $_ := .Messages }}\n{{- $last := eq (len (slice $.Messages $i)) 1 }}\n"
        + body + "\n{{- end }}\n{{- end }}"
    )
    lines = [
        "# Written by ftlib from the tokenizer's chat template. Import with:",
        "#   ollama create my-model -f Modelfile   (run in this folder)",
        f"FROM {source}",
        f'TEMPLATE """{template}"""',
    ]
    lines += [f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}" for stop in ollama_stops(tokenizer, parts)]
    if system_prompt:
        lines.append(f'SYSTEM """{system_prompt}"""')
    return "\n".join(lines) + "\n"


def write_ollama_files(folder, tokenizer, target, system_prompt=None, gguf=None):
    """Write the GGUF files (when `gguf` is a `gguf_plan`) and a Modelfile into `folder`; returns notes.

    `target` is where the folder will end up, for the import command in the notes.

    Example:
        >>> notes = write_ollama_files(folder, tokenizer, folder)  # doctest: +SKIP
    """
    gguf_files = write_gguf(folder, *gguf, model_name=Path(target).name) if gguf is not None else []
    source = f"./{gguf_files[0]}" if gguf_files else "."
    notes = []
    try:
        modelfile = ollama_modelfile(tokenizer, source, system_prompt)
    except FtlibError:
        if gguf is None:
            raise
        # A GGUF file carries the chat template itself, and Ollama reads it from there.
        modelfile = f"FROM {source}\n"
        notes.append("The chat template could not be written as an Ollama TEMPLATE; Ollama will use "
                     "the one stored in the GGUF file.")
    (folder / "Modelfile").write_text(modelfile)
    notes.append(f"Import into Ollama: cd {target} && ollama create my-model -f Modelfile")
    if gguf is None:
        notes.append("(Ollama imports safetensors for Llama, Mistral, Gemma, Phi-3 and Qwen shapes; "
                     "for others use method='gguf'.)")
    return notes
