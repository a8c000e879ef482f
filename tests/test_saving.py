"""save: each method round-trips on the tiny model; atomic saves; Ollama Modelfile; GGUF; Hub push."""

import io
import json
import os
import re
import shutil
import sys

import pytest
import torch

import ftlib
from ftlib.errors import FtlibError
from ftlib.generation import generate, run_chat
from ftlib.export.hub import push_to_hub
from ftlib.export.ollama import chat_template_parts, ollama_stops, render_with_parts
from ftlib.export.saving import save

PROMPTS = ["Acme shares rose after strong sales. Positive or negative?", "Globex"]
RAW = "Acme shares"


def with_lora(model, seed=0):
    """Attach LoRA and give lora_B non-zero values, so the adapter really changes the outputs."""
    model = ftlib.add_lora(model, r=8, lora_alpha=16)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model


def outputs(model, tokenizer):
    """Greedy replies (two chat prompts, one plain) and next-token logits: what a save must keep."""
    model.eval()
    chat_prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                  add_generation_prompt=True) for p in PROMPTS]
    replies = generate(model, tokenizer, chat_prompts + [RAW], max_new_tokens=8, use_chat_template=False)
    return replies, last_logits(model, tokenizer)


def last_logits(model, tokenizer):
    ids = tokenizer(RAW, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits[0, -1].float()


def assert_same_outputs(expected, actual, atol=1e-4):
    assert actual[0] == expected[0]
    assert torch.allclose(actual[1], expected[1], atol=atol), (actual[1] - expected[1]).abs().max()


@pytest.fixture(scope="module")
def tuned():
    """One adapter model for the module: saving must never change it, and the tests check that."""
    model, tokenizer = ftlib.load_model("ftlib-tiny", load_in_4bit=False, max_seq_length=256)
    base_logits = last_logits(model, tokenizer)
    model = with_lora(model)
    expected = outputs(model, tokenizer)
    assert not torch.allclose(expected[1], base_logits, atol=1e-3)  # the adapter matters
    return model, tokenizer, expected


def test_lora_round_trip(tuned, tmp_path, monkeypatch):
    model, tokenizer, expected = tuned
    model.ftlib_training = {  # the shape train() leaves on the model
        "learning_rate": 2e-4, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 4,
        "max_steps": 60, "num_train_epochs": None, "steps_done": 60, "train_examples": 800,
        "final_loss": 0.61, "final_eval_loss": 0.72, "data_shape": "question/answer", "hub_token": "hf_nope",
    }
    result = save(model, tokenizer, tmp_path / "adapter", verbose=False)
    folder = tmp_path / "adapter"
    names = {name for name, _ in result.files}
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "tokenizer.json"} <= names
    assert result.total_bytes == sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == "ftlib-tiny"
    card = (folder / "README.md").read_text()
    for text in ("base_model: ftlib-tiny", "| r | 8 |", "| final_loss | 0.6100 |", "| final_eval_loss | 0.7200 |",
                 "| data_shape | question/answer |", "| train_examples | 800 |", "| learning_rate | 0.0002 |",
                 "| gradient_accumulation_steps | 4 |"):
        assert text in card
    assert "hf_nope" not in card  # anything named like a secret stays out of the card
    del model.ftlib_training

    reloaded, reloaded_tokenizer = ftlib.load_model(str(folder), load_in_4bit=False)
    assert_same_outputs(expected, outputs(reloaded, reloaded_tokenizer))
    assert outputs(model, tokenizer)[0] == expected[0]  # saving left the live model as it was

    typed = iter([PROMPTS[1], "/exit"])  # what `ftlib chat FOLDER` runs
    monkeypatch.setattr("builtins.input", lambda prompt="": next(typed))
    history = run_chat(str(folder), max_new_tokens=8)
    assert history[-1]["content"] == generate(reloaded, reloaded_tokenizer, PROMPTS[1], max_new_tokens=8)


def test_merged_round_trip_leaves_the_adapter_model_alone(tuned, tmp_path, capsys):
    model, tokenizer, expected = tuned
    result = save(model, tokenizer, tmp_path / "merged", method="merged_16bit", verbose=False)
    folder = tmp_path / "merged"
    assert "model.safetensors" in dict(result.files) and not (folder / "adapter_config.json").exists()
    capsys.readouterr()
    reloaded, reloaded_tokenizer = ftlib.load_model(str(folder))  # the defaults: no load_in_4bit=False needed
    notes = [line for line in capsys.readouterr().out.splitlines() if "merged weights" in line]
    assert len(notes) == 1 and "load_in_4bit=True" in notes[0]  # says, in one line, why it is not 4-bit
    assert reloaded.ftlib_settings["load_in_4bit"] is False
    assert not hasattr(reloaded, "peft_config")  # a plain model: vLLM and transformers load it as is
    assert_same_outputs(expected, outputs(reloaded, reloaded_tokenizer))
    assert hasattr(model, "peft_config")
    assert_same_outputs(expected, outputs(model, tokenizer), atol=0)
    quantised, _ = ftlib.load_model(str(folder), load_in_4bit=True)  # asked for explicitly: still 4-bit
    assert type(quantised.model.layers[0].self_attn.q_proj.weight).__name__ == "Params4bit"


def test_merged_float16_and_shards(tuned, tmp_path):
    model, tokenizer, expected = tuned
    save(model, tokenizer, tmp_path / "half", method="merged_16bit", dtype="float16",
         max_shard_size="2MB", verbose=False)
    folder = tmp_path / "half"
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((folder / name).is_file() for name in shards)
    assert json.loads((folder / "config.json").read_text())["dtype"] == "float16"
    reloaded, _ = ftlib.load_model(str(folder), load_in_4bit=False, dtype="float16")
    assert reloaded.get_input_embeddings().weight.dtype == torch.float16
    ids = tokenizer(RAW, return_tensors="pt")
    with torch.no_grad():
        logits = reloaded(**ids).logits[0, -1].float()
    assert torch.allclose(logits, expected[1], atol=0.05)  # 16-bit rounding only


def test_merged_from_a_4bit_base_matches_the_adapter_model(tmp_path):
    model, tokenizer = ftlib.load_model("ftlib-tiny", load_in_4bit=True, max_seq_length=256)
    assert type(model.model.layers[0].self_attn.q_proj.weight).__name__ == "Params4bit"
    for module in model.modules():
        # bitsandbytes' CPU fast path computes in bfloat16; the standard path is exact, so the
        # comparison below can be strict.
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    model = with_lora(model)
    expected = outputs(model, tokenizer)
    save(model, tokenizer, tmp_path / "merged", method="merged_16bit", verbose=False)
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert "quantization_config" not in config  # de-quantised: a plain full-precision model
    reloaded, reloaded_tokenizer = ftlib.load_model(str(tmp_path / "merged"))
    weight = reloaded.model.layers[0].self_attn.q_proj.weight
    assert weight.dtype == torch.float32 and weight.shape == (192, 192)
    assert_same_outputs(expected, outputs(reloaded, reloaded_tokenizer))


def test_dequantising_weights_the_cpu_kernel_repacked():
    # On CPUs with AVX512-BF16, bitsandbytes repacks 4-bit weights on the first eval forward; the
    # merge must read that layout too. Pack a copy explicitly so this runs on any CPU.
    import copy

    import bitsandbytes
    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    from ftlib.export.merged import _dequantize_cpu_packed

    torch.manual_seed(0)
    layer = bitsandbytes.nn.Linear4bit(128, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4",
                                       compress_statistics=True)
    layer.weight = bitsandbytes.nn.Params4bit(torch.randn(64, 128) * 0.05, requires_grad=False,
                                              quant_type="nf4", compress_statistics=True).to("cpu")
    weight = layer.weight
    standard = bitsandbytes.functional.dequantize_4bit(weight.data, weight.quant_state).float()
    packed, state = _convert_weight_packed_for_cpu(weight.data.clone(), copy.deepcopy(weight.quant_state))
    unpacked = _dequantize_cpu_packed(packed, state)
    assert unpacked.shape == standard.shape
    # Identical codes; the repacked block scales are bfloat16 (about 3 significant digits).
    assert torch.allclose(unpacked, standard, rtol=1e-2, atol=1e-4)
    assert not torch.allclose(unpacked, standard.roll(1, dims=1), rtol=1e-2, atol=1e-4)


def go_template_render(template, messages):
    """Run the Modelfile TEMPLATE that ftlib writes (its subset of Go templates) on `messages`."""
    literal = r'\{\{ ("(?:[^"\\]|\\.)*") \}\}'
    head = re.match(literal, template)
    text = json.loads(head.group(1)) if head else ""
    default = re.match(r'\{\{- if or \(eq \(len \.Messages\) 0\) \(ne \(index \.Messages 0\)\.Role "system"\) \}\}'
                       + literal + r"\{\{ end \}\}", template)
    if default and (not messages or messages[0]["role"] != "system"):
        text += json.loads(default.group(1))  # the default system turn, when the conversation has none
    branches = {}
    for role, body in re.findall(r'if eq \.Role "(\w+)" \}\}(.*)', template):
        pieces = re.findall(literal + r"|(\{\{ \.Content \}\})|\{\{ if (not )?\$last \}\}", body)
        branches[role] = pieces
    for index, message in enumerate(messages):
        last = index == len(messages) - 1
        condition = True
        for string, content, negated in branches[message["role"]]:
            if string == "" and content == "":  # an {{ if $last }} / {{ if not $last }}
                condition = (not last) if negated else last
            elif content:
                text += message["content"]
            elif condition:
                text += json.loads(string)
    return text


def test_ollama_modelfile_follows_the_chat_template(tuned, tmp_path):
    model, tokenizer, expected = tuned
    save(model, tokenizer, tmp_path / "ollama", method="ollama", verbose=False)
    modelfile = (tmp_path / "ollama" / "Modelfile").read_text()
    assert "FROM .\n" in modelfile
    template = re.search(r'TEMPLATE """(.*?)"""', modelfile, re.DOTALL).group(1)
    conversations = [
        [{"role": "user", "content": "Is Acme up?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Acme?"}],
    ]
    for messages in conversations:
        assert go_template_render(template, messages) == tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True)
    stops = re.findall(r"PARAMETER stop (.*)", modelfile)
    stops = [json.loads(stop) for stop in stops]
    assert tokenizer.eos_token in stops
    reply = tokenizer.apply_chat_template(conversations[1][:3], tokenize=False)
    assert reply.rstrip().endswith(stops[0])  # the end-of-turn marker that closes an assistant reply
    assert stops == ollama_stops(tokenizer, chat_template_parts(tokenizer))
    reloaded, reloaded_tokenizer = ftlib.load_model(str(tmp_path / "ollama"), load_in_4bit=False)
    assert_same_outputs(expected, outputs(reloaded, reloaded_tokenizer))


def test_chat_template_parts_rebuild_a_chatml_template(tiny_tokenizer):
    tokenizer = tiny_tokenizer
    original = tokenizer.chat_template
    tokenizer.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    try:
        parts = chat_template_parts(tokenizer)
        messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"}]
        assert render_with_parts(parts, messages) == tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True)
        assert ollama_stops(tokenizer, parts)[0] == "<|im_end|>"
    finally:
        tokenizer.chat_template = original


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_failed_save_leaves_the_earlier_save_intact(tuned, tmp_path, monkeypatch):
    model, tokenizer, _ = tuned
    folder = tmp_path / "adapter"
    save(model, tokenizer, folder, verbose=False)
    before = snapshot(folder)

    def broken_card(*args, **kwargs):  # fails after the weights were written
        raise OSError("disk full")

    monkeypatch.setattr("ftlib.export.saving.model_card", broken_card)
    with pytest.raises(OSError, match="disk full"):
        save(model, tokenizer, folder, method="merged_16bit", overwrite=True, verbose=False)
    assert snapshot(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no temporary folder left behind
    monkeypatch.undo()

    def failing_exchange(first, second):  # the one-step swap of the two folders fails
        raise OSError("exchange failed")

    monkeypatch.setattr("ftlib.export.saving._exchange", failing_exchange)
    with pytest.raises(OSError, match="exchange failed"):
        save(model, tokenizer, folder, method="merged_16bit", overwrite=True, verbose=False)
    monkeypatch.undo()
    assert snapshot(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]

    # Where the system cannot swap in one step: the old save is moved aside, then the new one in.
    real_replace = os.replace
    calls = []

    def failing_second_rename(source, destination):  # the old save moved aside, then the swap fails
        calls.append(source)
        if len(calls) == 2:
            raise OSError("rename failed")
        return real_replace(source, destination)

    monkeypatch.setattr("ftlib.export.saving._exchange", lambda first, second: False)
    monkeypatch.setattr("ftlib.export.saving.os.replace", failing_second_rename)
    with pytest.raises(OSError, match="rename failed"):
        save(model, tokenizer, folder, method="merged_16bit", overwrite=True, verbose=False)
    monkeypatch.undo()
    assert snapshot(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_refuses_to_overwrite_unless_asked(tuned, tmp_path):
    model, tokenizer, _ = tuned
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "diary.txt").write_text("mine")
    with pytest.raises(FtlibError, match="overwrite=True"):
        save(model, tokenizer, notes, verbose=False)
    with pytest.raises(FtlibError, match="choose a new folder"):
        save(model, tokenizer, notes, overwrite=True, verbose=False)  # not a save: never deleted
    assert (notes / "diary.txt").read_text() == "mine"

    folder = tmp_path / "adapter"
    save(model, tokenizer, folder, verbose=False)
    with pytest.raises(FtlibError, match="overwrite=True"):
        save(model, tokenizer, folder, method="merged_16bit", verbose=False)
    save(model, tokenizer, folder, method="merged_16bit", overwrite=True, verbose=False)
    assert (folder / "config.json").is_file() and not (folder / "adapter_config.json").exists()


def test_report_and_bad_methods(tuned, tmp_path, capsys):
    model, tokenizer, _ = tuned
    result = save(model, tokenizer, tmp_path / "adapter")
    shown = capsys.readouterr().out
    assert str(tmp_path / "adapter") in shown and "adapter_model.safetensors" in shown and "kB" in shown
    assert str(result) in shown
    with pytest.raises(FtlibError, match="merged_16bit"):
        save(model, tokenizer, tmp_path / "x", method="merged")
    plain, plain_tokenizer = ftlib.load_model("ftlib-tiny", load_in_4bit=False)
    with pytest.raises(FtlibError, match="method='merged_16bit'"):
        save(plain, plain_tokenizer, tmp_path / "y")  # no adapter to save
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


class FakeHub:
    """Records what would be uploaded; optionally fails like a real request that echoes its headers."""

    def __init__(self, fail_with=None):
        self.calls, self.fail_with = [], fail_with

    def create_repo(self, repo_id, token=None, private=True, exist_ok=True):
        self.calls.append(("create_repo", repo_id, token, private))

    def upload_folder(self, folder_path, repo_id, token=None, commit_message="", allow_patterns=None):
        if self.fail_with:
            raise RuntimeError(self.fail_with)
        names = sorted(os.listdir(folder_path))
        uploaded = [name for name in names if allow_patterns is None or name in allow_patterns]
        self.calls.append(("upload_folder", repo_id, token, uploaded))


SECRET = "hf_SecretTokenForTests1234567890"


def use_hub(monkeypatch, hub):
    """Make huggingface_hub.HfApi() return `hub`, as push_to_hub creates it; returns `hub`."""
    monkeypatch.setattr("huggingface_hub.HfApi", lambda: hub)
    return hub


def test_hub_push_uses_the_token_and_never_shows_or_stores_it(tuned, tmp_path, capsys, monkeypatch):
    model, tokenizer, _ = tuned
    hub = use_hub(monkeypatch, FakeHub())
    result = save(model, tokenizer, tmp_path / "adapter", repo_id="me/tiny-adapter", token=SECRET)
    assert hub.calls[0] == ("create_repo", "me/tiny-adapter", SECRET, True)
    assert hub.calls[1][:3] == ("upload_folder", "me/tiny-adapter", SECRET)
    assert "adapter_model.safetensors" in hub.calls[1][3]
    assert result.repo_url == "https://huggingface.co/me/tiny-adapter"

    monkeypatch.setenv("HF_TOKEN", SECRET)  # from the environment
    hub = use_hub(monkeypatch, FakeHub())
    push_to_hub(tmp_path / "adapter", "me/tiny-adapter")
    assert hub.calls[0][2] == SECRET
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    asked = []
    monkeypatch.setattr("getpass.getpass", lambda text: asked.append(text) or SECRET)
    hub = use_hub(monkeypatch, FakeHub())
    push_to_hub(tmp_path / "adapter", "me/tiny-adapter")
    assert asked and "hidden" in asked[0] and hub.calls[0][2] == SECRET  # from the hidden prompt

    use_hub(monkeypatch, FakeHub(fail_with=f"401 Unauthorized: Bearer {SECRET}"))
    with pytest.raises(FtlibError) as failure:
        push_to_hub(tmp_path / "adapter", "me/tiny-adapter", token=SECRET)
    assert SECRET not in str(failure.value) and "write" in str(failure.value)
    assert failure.value.__cause__ is None and failure.value.__suppress_context__

    shown = capsys.readouterr()
    assert SECRET not in shown.out + shown.err + repr(result) + str(result)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    with pytest.raises(FtlibError, match="your-name/model-name"):
        save(model, tokenizer, tmp_path / "other", repo_id="no-slash", token=SECRET)
    assert not (tmp_path / "other").exists()  # a bad repo_id fails before anything is written


def test_gguf_without_a_converter_gives_the_steps(tuned, tmp_path, monkeypatch):
    model, tokenizer, _ = tuned
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    monkeypatch.setenv("FTLIB_CACHE", str(tmp_path / "cache"))  # where install_converter would have put it
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(FtlibError) as failure:
        save(model, tokenizer, tmp_path / "gguf", method="gguf", verbose=False)
    message = str(failure.value)
    assert "ftlib install-gguf-converter" in message.splitlines()[1]  # the one command comes first
    assert "git clone https://github.com/ggml-org/llama.cpp" in message
    assert "convert_hf_to_gguf.py" in message and "llama_cpp_dir" in message
    assert not (tmp_path / "gguf").exists()


FAKE_CONVERTER = """
import json, sys
arguments = sys.argv[1:]
output = arguments[arguments.index("--outfile") + 1]
kind = arguments[arguments.index("--outtype") + 1]
open(output, "w").write(json.dumps({"source": arguments[0], "outtype": kind}))
"""

FAKE_QUANTIZER = """#!{python}
import json, sys
source, output, kind = sys.argv[1:4]
values = json.load(open(source))
values["quantized"] = kind
open(output, "w").write(json.dumps(values))
"""


def test_gguf_runs_the_llama_cpp_converter(tuned, tmp_path):
    model, tokenizer, _ = tuned
    llama_cpp = tmp_path / "llama.cpp"
    (llama_cpp / "build" / "bin").mkdir(parents=True)
    (llama_cpp / "convert_hf_to_gguf.py").write_text(FAKE_CONVERTER)
    quantizer = llama_cpp / "build" / "bin" / "llama-quantize"
    quantizer.write_text(FAKE_QUANTIZER.format(python=sys.executable))
    quantizer.chmod(0o755)
    folder = tmp_path / "gguf"
    save(model, tokenizer, folder, method="gguf", quantization=["q8_0", "q4_k_m"], llama_cpp_dir=llama_cpp,
         verbose=False)
    q8 = json.loads((folder / "model-q8_0.gguf").read_text())
    q4 = json.loads((folder / "model-q4_k_m.gguf").read_text())
    assert q8["outtype"] == "q8_0" and q4 == {"source": q4["source"], "outtype": "f16", "quantized": "Q4_K_M"}
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.partial"))
    assert "FROM ./model-q8_0.gguf" in (folder / "Modelfile").read_text()


def test_gguf_modelfile_falls_back_to_the_template_stored_in_the_gguf(tiny_tokenizer, tmp_path):
    from ftlib.export.ollama import write_ollama_files

    tokenizer = tiny_tokenizer
    original = tokenizer.chat_template
    # Numbers each turn, so no fixed text around a message can rebuild it: no Ollama TEMPLATE exists.
    tokenizer.chat_template = "{% for m in messages %}[{{ loop.index }}]{{ m['content'] }}{% endfor %}"
    converter = tmp_path / "convert_hf_to_gguf.py"
    converter.write_text(FAKE_CONVERTER)
    try:
        with pytest.raises(FtlibError, match="merged_16bit"):  # plain Ollama has nowhere else to get it
            write_ollama_files(tmp_path, tokenizer, tmp_path)
        notes = write_ollama_files(tmp_path, tokenizer, tmp_path, gguf=(["q8_0"], converter, None))
    finally:
        tokenizer.chat_template = original
    assert (tmp_path / "Modelfile").read_text() == "FROM ./model-q8_0.gguf\n"
    assert json.loads((tmp_path / "model-q8_0.gguf").read_text())["outtype"] == "q8_0"
    assert "stored in the GGUF file" in notes[0]


def test_options_for_other_methods_or_no_push_name_the_fix(tuned, tmp_path):
    model, tokenizer, _ = tuned
    cases = [
        ({"system_prompt": "Be brief."}, "method='ollama' or method='gguf'"),
        ({"dtype": "float16"}, "method='merged_16bit'"),
        ({"max_shard_size": "2MB"}, "method='merged_16bit'"),
        ({"quantization": "q4_k_m"}, "method='gguf'"),
        ({"method": "merged_16bit", "llama_cpp_dir": "llama.cpp"}, "method='gguf'"),
        ({"token": SECRET}, "repo_id='your-name/model-name'"),
    ]
    for options, fix in cases:
        with pytest.raises(FtlibError, match=re.escape(fix)):
            save(model, tokenizer, tmp_path / "refused", verbose=False, **options)
    assert not (tmp_path / "refused").exists()
    with pytest.raises(TypeError):
        save(model, tokenizer, tmp_path / "refused", push_to_hub=True)  # repo_id alone asks for the push
    with pytest.raises(TypeError):
        save(model, tokenizer, tmp_path / "refused", "merged_16bit")  # options are named


def fake_source_package(folder):
    """A tar.gz shaped like llama-cpp-python's source package, with files the converter does not need."""
    import tarfile

    root = folder / "llama_cpp_python-0.0.1"
    files = {
        "vendor/llama.cpp/convert_hf_to_gguf.py": FAKE_CONVERTER,
        "vendor/llama.cpp/conversion/__init__.py": "",
        "vendor/llama.cpp/gguf-py/gguf/__init__.py": "",
        "vendor/llama.cpp/LICENSE": "MIT",
        "vendor/llama.cpp/src/llama.cpp": "// C++, not kept",
        "llama_cpp/__init__.py": "",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    archive = folder / "llama_cpp_python-0.0.1.tar.gz"
    with tarfile.open(archive, "w:gz") as packed:
        packed.add(root, arcname=root.name)
        escape = tarfile.TarInfo(f"{root.name}/vendor/llama.cpp/conversion/../../../../escaped.py")
        packed.addfile(escape, io.BytesIO(b""))  # a path that climbs out: never written
    return archive


def test_install_converter_keeps_only_the_converter_and_save_finds_it(tmp_path, monkeypatch):
    from ftlib.cli import main
    from ftlib.export import gguf

    archive = fake_source_package(tmp_path / "package")
    calls = []

    def fake_pip(*arguments):  # what `pip download --no-deps --no-binary :all: ... -d FOLDER` leaves
        calls.append(arguments)
        if arguments[0] == "download":
            shutil.copy(archive, arguments[arguments.index("-d") + 1])

    monkeypatch.setattr(gguf, "_pip", fake_pip)
    monkeypatch.setenv("FTLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    assert main(["install-gguf-converter"]) == 0
    folder = gguf.converter_folder()
    assert sorted(path.name for path in folder.iterdir()) == ["LICENSE", "conversion", "convert_hf_to_gguf.py",
                                                             "gguf-py"]
    assert not list(tmp_path.rglob("escaped.py")) and not list(tmp_path.glob("cache/.*partial*"))
    assert calls[0][:4] == ("download", "--no-deps", "--no-binary", ":all:")
    assert calls[0][4] == f"llama-cpp-python=={gguf.CONVERTER_VERSION}"
    assert gguf.find_llama_cpp()[0] == folder / "convert_hf_to_gguf.py"  # no llama_cpp_dir needed
    assert gguf.install_converter(verbose=False) == folder  # a second call keeps what is there


def test_gguf_names_the_converters_missing_python_packages(tmp_path, monkeypatch):
    from ftlib.export import gguf

    (tmp_path / "convert_hf_to_gguf.py").write_text(FAKE_CONVERTER)
    real_find_spec = gguf.importlib.util.find_spec
    monkeypatch.setattr(gguf.importlib.util, "find_spec",
                        lambda name: None if name == "sentencepiece" else real_find_spec(name))
    with pytest.raises(FtlibError, match="pip install sentencepiece"):
        gguf.gguf_plan("q8_0", tmp_path)


def test_adapter_size_is_shown_beside_an_8b_models(tuned, tmp_path):
    model, tokenizer, _ = tuned
    result = save(model, tokenizer, tmp_path / "adapter", verbose=False)
    line = next(note for note in result.notes if note.startswith("Adapter:"))
    weights = dict(result.files)["adapter_model.safetensors"]
    lora = sum(p.numel() for name, p in model.named_parameters() if ".lora_" in name)
    assert f"({lora:,} LoRA weights, r=8 on 7 projections)" in line
    from ftlib.export.saving import human_size

    assert line.startswith(f"Adapter: {human_size(weights)} ")
    # Llama-3.1-8B: 32 layers x r x (q 4096+4096, k and v 4096+1024, o 4096+4096, gate and up 4096+14336,
    # down 14336+4096) = 32 x 8 x 81,920 weights, 4 bytes each in float32
    assert "Llama-3.1-8B: 83.9 MB as stored here (float32), 41.9 MB in 16-bit" in line
    assert "about 100 MB for an 8B model" in line and "\n" not in line


def test_a_tokenizer_llama_cpp_does_not_know_gets_advice_not_just_a_traceback(tuned, tmp_path):
    model, tokenizer, _ = tuned
    (tmp_path / "llama.cpp").mkdir()
    said = "NotImplementedError: BPE pre-tokenizer was not recognized - update get_vocab_base_pre()"
    (tmp_path / "llama.cpp" / "convert_hf_to_gguf.py").write_text(  # what the converter says for ftlib-tiny
        f"import sys\nsys.exit({said!r})")
    with pytest.raises(FtlibError, match="method='merged_16bit'") as failure:
        save(model, tokenizer, tmp_path / "gguf", method="gguf", llama_cpp_dir=tmp_path / "llama.cpp", verbose=False)
    assert "pre-tokenizer was not recognized" in str(failure.value) and not (tmp_path / "gguf").exists()


def test_a_gguf_gpt2_style_tokenizer_is_given_to_llama_cpp_as_byte_level_bpe():
    from ftlib.export.gguf import byte_level_tokenizer_for_llama_cpp

    # What transformers writes for a tokenizer it read from a GGUF file (SmolLM2's): byte-level BPE that
    # also says byte_fallback, with a SentencePiece-style decoder chain.
    read_from_gguf = {
        "model": {"type": "BPE", "byte_fallback": True, "vocab": {"a": 0, "Ġb": 1}, "merges": []},
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"},
                                                     {"type": "ByteLevel"}]},
    }
    fixed = byte_level_tokenizer_for_llama_cpp(read_from_gguf)
    assert fixed["model"]["byte_fallback"] is False and fixed["decoder"]["type"] == "ByteLevel"
    assert fixed["model"]["vocab"] == read_from_gguf["model"]["vocab"] and read_from_gguf["model"]["byte_fallback"]
    sentencepiece_style = dict(read_from_gguf, model=dict(read_from_gguf["model"], vocab={"<0x41>": 0, "▁b": 1}))
    assert byte_level_tokenizer_for_llama_cpp(sentencepiece_style) is None  # real byte tokens: left alone
    assert byte_level_tokenizer_for_llama_cpp(dict(read_from_gguf, pre_tokenizer={"type": "Metaspace"})) is None


def test_a_template_with_a_default_system_turn_keeps_it_and_a_given_one(tiny_tokenizer):
    from ftlib.export.ollama import ollama_modelfile

    tokenizer = tiny_tokenizer
    original = tokenizer.chat_template
    # SmolLM2's and Qwen's shape: a default system turn when the conversation starts without one.
    tokenizer.chat_template = (
        "{% for m in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are helpful.<|im_end|>\n' }}{% endif %}"
        "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    try:
        parts = chat_template_parts(tokenizer)
        template = re.search(r'TEMPLATE """(.*?)"""', ollama_modelfile(tokenizer), re.DOTALL).group(1)
        for messages in ([{"role": "user", "content": "a"}],
                         [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a"},
                          {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]):
            expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            assert render_with_parts(parts, messages) == expected
            assert go_template_render(template, messages) == expected
    finally:
        tokenizer.chat_template = original
    assert parts["default_system"] == "You are helpful." and parts["system"] == ("<|im_start|>system\n", "<|im_end|>\n")
