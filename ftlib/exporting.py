"""Step 7 of the guide, beyond a folder: run the fine-tune in Ollama or llama.cpp, or share it on the Hub.

    >>> print(ollama_modelfile(tokenizer))                 # TEMPLATE and stops from the chat template
    >>> push_to_hub("my-adapter", "your-name/my-adapter")  # upload a folder that `save` wrote

`save(..., method="ollama" | "gguf", push_to_hub=True)` calls these for you; they are here for the
steps `save` does not take (a Modelfile for a folder you already have, a second upload).
"""

import getpass
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from ftlib.errors import FtlibError

GGUF_QUANTIZATIONS = {"q8_0": "Q8_0", "q4_k_m": "Q4_K_M", "f16": "F16"}


# ----------------------------------------------------------------------------- Ollama


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
             "system": None}
    try:
        with_system = render([("system", system), ("user", user)])
        user_text = user_turn[0] + user + user_turn[1]
        if with_system.startswith(head) and with_system.endswith(user_text):
            system_turn = tuple(with_system[len(head): len(with_system) - len(user_text)].split(system))
            if len(system_turn) == 2:
                parts["system"] = system_turn
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
    branches = []
    if parts["system"]:
        branches.append('if eq .Role "system" }}' + _go_string(parts["system"][0]) + "{{ .Content }}"
                        + _go_string(parts["system"][1]))
    branches.append('if eq .Role "user" }}' + _go_string(parts["user"][0]) + "{{ .Content }}"
                    + _go_string(parts["user"][1]) + "{{ if $last }}" + _go_string(parts["generation_prompt"])
                    + "{{ end }}")
    branches.append('if eq .Role "assistant" }}' + _go_string(parts["assistant"][0]) + "{{ .Content }}"
                    + "{{ if not $last }}" + _go_string(parts["assistant"][1]) + "{{ end }}")
    body = "\n{{- else ".join(["{{- " + branches[0]] + branches[1:])
    template = (
        (_go_string(head) if head else "")
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


# ----------------------------------------------------------------------------- GGUF


GGUF_STEPS = (
    "GGUF export needs llama.cpp's converter, which was not found. To install it:\n"
    "  git clone https://github.com/ggml-org/llama.cpp\n"
    "  pip install -r llama.cpp/requirements.txt                    # the converter's Python packages\n"
    "  cmake -S llama.cpp -B llama.cpp/build && cmake --build llama.cpp/build --target llama-quantize -j"
    "   # only for q4_k_m\n"
    "then pass llama_cpp_dir='llama.cpp' (or set LLAMA_CPP_DIR). Or convert by hand:\n"
    "  save(model, tokenizer, 'merged', method='merged_16bit')\n"
    "  python llama.cpp/convert_hf_to_gguf.py merged --outtype q8_0 --outfile model-q8_0.gguf"
)


def find_llama_cpp(llama_cpp_dir=None):
    """(converter script, llama-quantize binary or None) from llama_cpp_dir, LLAMA_CPP_DIR or PATH.

    Example:
        >>> find_llama_cpp("llama.cpp")  # doctest: +SKIP
    """
    folders = [Path(p).expanduser() for p in (llama_cpp_dir, os.environ.get("LLAMA_CPP_DIR")) if p]
    converter = next((f / "convert_hf_to_gguf.py" for f in folders if (f / "convert_hf_to_gguf.py").is_file()), None)
    if converter is None:
        found = shutil.which("convert_hf_to_gguf.py") or shutil.which("convert-hf-to-gguf")
        converter = Path(found) if found else None
    candidates = [path for folder in folders for path in (folder / "build" / "bin" / "llama-quantize",
                                                          folder / "llama-quantize")]
    quantizer = next((path for path in candidates if path.is_file() and os.access(path, os.X_OK)), None)
    if quantizer is None and shutil.which("llama-quantize"):
        quantizer = Path(shutil.which("llama-quantize"))
    return converter, quantizer


def gguf_plan(quantization, llama_cpp_dir=None):
    """(quantizations, converter, quantizer), checked before any work so a missing tool fails at once.

    Example:
        >>> quantizations, converter, quantizer = gguf_plan("q8_0", "llama.cpp")  # doctest: +SKIP
    """
    quantizations = [quantization] if isinstance(quantization, str) else list(quantization)
    for name in quantizations:
        if name not in GGUF_QUANTIZATIONS:
            raise FtlibError(f"unknown GGUF quantization {name!r}: use one of {sorted(GGUF_QUANTIZATIONS)} "
                             "(q8_0: near-lossless, half of 16-bit; q4_k_m: a quarter, small quality loss)")
    converter, quantizer = find_llama_cpp(llama_cpp_dir)
    if converter is None:
        raise FtlibError(GGUF_STEPS)
    if "q4_k_m" in quantizations and quantizer is None:
        raise FtlibError("q4_k_m needs llama.cpp's llama-quantize program, which was not found: "
                         "cmake -S llama.cpp -B llama.cpp/build && cmake --build llama.cpp/build "
                         "--target llama-quantize -j, then pass llama_cpp_dir='llama.cpp'; or use quantization='q8_0'")
    return quantizations, converter, quantizer


def _run(command):
    finished = subprocess.run([str(part) for part in command], capture_output=True, text=True)
    if finished.returncode != 0:
        tail = (finished.stderr or finished.stdout).strip()[-1500:]
        program = Path(str(command[1] if command[0] == sys.executable else command[0])).name
        raise FtlibError(f"{program} failed "
                         f"(exit {finished.returncode}):\n{tail}\nCheck that llama.cpp is up to date "
                         "(git pull) and supports this architecture.")


def _write_gguf(folder, quantizations, converter, quantizer):
    written = []
    for name in quantizations:
        output = folder / f"model-{name}.gguf"
        if name == "q4_k_m":
            # The converter writes 16-bit; llama-quantize then makes the k-quant from it.
            intermediate = folder / "model-f16.gguf.partial"
            _run([sys.executable, converter, folder, "--outfile", intermediate, "--outtype", "f16"])
            _run([quantizer, intermediate, output, GGUF_QUANTIZATIONS[name]])
            intermediate.unlink(missing_ok=True)
        else:
            _run([sys.executable, converter, folder, "--outfile", output, "--outtype", name])
        written.append(output.name)
    return written


def write_ollama_files(folder, tokenizer, target, system_prompt=None, gguf=None):
    """Write the GGUF files (when `gguf` is a `gguf_plan`) and a Modelfile into `folder`; returns notes.

    `target` is where the folder will end up, for the import command in the notes.

    Example:
        >>> notes = write_ollama_files(folder, tokenizer, folder)  # doctest: +SKIP
    """
    gguf_files = _write_gguf(folder, *gguf) if gguf is not None else []
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


# ----------------------------------------------------------------------------- Hub


def resolve_token(token=None, prompt=None):
    """The Hub token: the argument, else HF_TOKEN, else a saved login, else a hidden prompt.

    Example:
        >>> token = resolve_token()  # doctest: +SKIP
    """
    if token:
        return token
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"]
    try:
        from huggingface_hub import get_token

        saved = get_token()
    except Exception:  # no saved login
        saved = None
    if saved:
        return saved
    prompt = prompt or getpass.getpass  # looked up now, so tests and notebooks can replace it
    typed = prompt("Hugging Face token with write access (hidden): ").strip()
    if not typed:
        raise FtlibError("no Hugging Face token: pass token=..., set HF_TOKEN, or run `hf auth login` "
                         "(create one at https://huggingface.co/settings/tokens, 'write' access)")
    return typed


def push_to_hub(folder, repo_id, token=None, private=True, commit_message="Upload with ftlib", api=None,
                prompt=None):
    """Upload a folder that `save` wrote to a Hub repository (created when missing); returns its URL.

    The token is used for the upload only: never printed, logged or written into any file.

    Example:
        >>> push_to_hub("my-adapter", "your-name/my-adapter")  # doctest: +SKIP
        'https://huggingface.co/your-name/my-adapter'
    """
    if not isinstance(repo_id, str) or not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
        raise FtlibError(f"repo_id must look like 'your-name/model-name', got {repo_id!r}")
    folder = Path(folder)
    if not folder.is_dir():
        raise FtlibError(f"nothing to push: {folder} is not a folder; save the model there first")
    secret = resolve_token(token, prompt)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    try:
        api.create_repo(repo_id=repo_id, token=secret, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, token=secret, commit_message=commit_message)
    except Exception as error:
        message = str(error).replace(secret, "***")  # errors may echo request headers
        raise FtlibError(
            f"pushing {folder} to {repo_id} failed ({type(error).__name__}: {message[:500]}): check the network, "
            "that the token has 'write' access (https://huggingface.co/settings/tokens) and that you may "
            f"write to '{repo_id.split('/')[0]}'"
        ) from None  # keep the original error (and any token in it) out of the traceback
    return f"https://huggingface.co/{repo_id}"
