"""Export on the real model: SmolLM2-135M-Instruct fine-tuned on the headline task (conftest's smollm2_trained)
keeps its greedy answers, logits and stopping point through a merged save and through GGUF files.

The GGUF files are written by llama.cpp's own converter, installed from PyPI by install_converter (the
source package of llama-cpp-python carries it), and read back with transformers (`gguf_file=`), as another
tool would read them. Each model stops at its own EOS here (transformers' generate, not ftlib's stop list),
so a file that names the wrong EOS would run on past the answer.
"""

import json
import re
import time

import pytest
import torch

from conftest import all_cores
from ftlib import load_model, save
from ftlib.export.gguf import install_converter
from ftlib.export.ollama import chat_template_parts, ollama_modelfile, ollama_stops
from ftlib.generation import build_prompt
from test_saving import go_template_render

pytestmark = pytest.mark.slow

MAX_NEW_TOKENS = 8  # "positive" or "negative" and the end of turn take 2-3 tokens


def greedy_run(model, tokenizer, questions):
    """Greedy replies to `questions`, stopping at the model's own EOS: (token lists up to and with EOS, logits).

    `tokenizer` makes the token ids, so models compared with the same tokenizer read the very same ids.
    logits[i, step] is the next-token distribution before reply token `step`.
    """
    texts = [build_prompt(tokenizer, question) for question in questions]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    tokenizer.padding_side = side
    eos = model.generation_config.eos_token_id
    model.eval()
    with torch.no_grad(), all_cores():
        out = model.generate(**batch, do_sample=False, max_new_tokens=MAX_NEW_TOKENS, eos_token_id=eos,
                             pad_token_id=tokenizer.pad_token_id, output_logits=True, return_dict_in_generate=True)
    eos_ids = set(eos) if isinstance(eos, (list, tuple)) else {eos}
    replies = []
    for row in out.sequences[:, batch["input_ids"].shape[1]:].tolist():
        ends = [step for step, token in enumerate(row) if token in eos_ids]
        replies.append(row[: ends[0] + 1] if ends else row)
    return replies, torch.stack(out.logits, dim=1).float()


def _steps_read_alike(reply, reference_reply):
    """Steps whose logits both runs computed from the same tokens: up to and with the first differing token."""
    same = 0
    while same < min(len(reply), len(reference_reply)) and reply[same] == reference_reply[same]:
        same += 1
    return min(same + 1, len(reply), len(reference_reply))


def largest_logit_difference(replies, logits, reference_logits, reference_replies=None):
    """Largest |logit difference| over every step both runs generated from the same tokens."""
    reference_replies = reference_replies or replies
    return max((logits[i, :steps] - reference_logits[i, :steps]).abs().max().item()
               for i, (reply, reference_reply) in enumerate(zip(replies, reference_replies))
               if (steps := _steps_read_alike(reply, reference_reply)))


@pytest.fixture(scope="module")
def reference(smollm2_trained):
    """The fine-tuned adapter model's greedy replies and logits on the 32 held-out headlines."""
    questions = [row["question"] for row in smollm2_trained.test_rows]
    replies, logits = greedy_run(smollm2_trained.model, smollm2_trained.tokenizer, questions)
    im_end = smollm2_trained.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert all(reply[-1] == im_end for reply in replies)  # the adapter model ends each answer there
    return questions, replies, logits


@pytest.fixture(scope="module")
def converter(request, tmp_path_factory):
    """llama.cpp's converter, installed by install_converter; kept in pytest's cache between runs."""
    cache = getattr(request.config, "cache", None)
    folder = cache.mkdir("llama-cpp-converter") if cache is not None else tmp_path_factory.mktemp("converter")
    started = time.perf_counter()
    folder = install_converter(folder)
    print(f"install_converter: {time.perf_counter() - started:.0f} s")
    return folder


@pytest.fixture(scope="module")
def gguf_folder(smollm2_trained, converter, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export") / "headlines-gguf"
    started = time.perf_counter()
    with all_cores():
        save(smollm2_trained.model, smollm2_trained.tokenizer, folder, method="gguf",
             quantization=["q8_0", "f16"], llama_cpp_dir=converter, verbose=False)
    print(f"save(method='gguf', quantization=['q8_0', 'f16']): {time.perf_counter() - started:.0f} s "
          "(merged weights, then both conversions)")
    return folder


def test_a_merged_save_reloads_with_the_defaults_to_the_adapters_answers(smollm2_trained, reference, tmp_path):
    questions, expected, expected_logits = reference
    folder = tmp_path / "merged"
    save(smollm2_trained.model, smollm2_trained.tokenizer, folder, method="merged_16bit", verbose=False)
    with all_cores():
        merged, tokenizer = load_model(str(folder))  # no load_in_4bit=False: the folder says it is merged
    assert merged.ftlib_settings["load_in_4bit"] is False
    replies, logits = greedy_run(merged, tokenizer, questions)
    difference = largest_logit_difference(replies, logits, expected_logits)
    print(f"merged_16bit reloaded with the defaults: {sum(a == b for a, b in zip(replies, expected))}/"
          f"{len(expected)} same replies, largest logit difference {difference:.2g}")
    assert replies == expected
    assert difference < 1e-3  # the same float32 weights, added up in another order


def flipped_margins(replies, expected, expected_logits):
    """For each reply that differs from the adapter's: how far the adapter preferred its own token there."""
    margins = []
    for i, (reply, reference_reply) in enumerate(zip(replies, expected)):
        if reply != reference_reply:
            step = _steps_read_alike(reply, reference_reply) - 1  # the first differing token
            ours, theirs = reference_reply[step], reply[step]
            margins.append((expected_logits[i, step, ours] - expected_logits[i, step, theirs]).item())
    return margins


# 16-bit keeps every greedy answer; 8-bit rounding (q8_0) may flip answers whose two best tokens the adapter
# scored nearly alike (a few of the 32 held-out answers), and every reply still ends at <|im_end|>.
@pytest.mark.parametrize("quantization, tolerance, may_differ", [("f16", 0.25, 0), ("q8_0", 2.5, 3)])
def test_gguf_files_read_back_to_the_adapters_answers_and_stop(gguf_folder, reference, smollm2_trained,
                                                               quantization, tolerance, may_differ):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    questions, expected, expected_logits = reference
    tokenizer = smollm2_trained.tokenizer
    path = gguf_folder / f"model-{quantization}.gguf"
    started = time.perf_counter()
    with all_cores():
        model = AutoModelForCausalLM.from_pretrained(gguf_folder, gguf_file=path.name, dtype=torch.float32)
        gguf_tokenizer = AutoTokenizer.from_pretrained(gguf_folder, gguf_file=path.name)
    seconds = time.perf_counter() - started
    texts = [build_prompt(tokenizer, question) for question in questions]
    assert [gguf_tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts] == \
        [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]  # the file's tokenizer
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")

    replies, logits = greedy_run(model, tokenizer, questions)
    difference = largest_logit_difference(replies, logits, expected_logits, expected)
    same = sum(a == b for a, b in zip(replies, expected))
    margins = flipped_margins(replies, expected, expected_logits)  # printed: how near a tie each flip was
    print(f"GGUF {quantization}: {path.stat().st_size / 1e6:.0f} MB, read back in {seconds:.0f} s; "
          f"{same}/{len(expected)} same greedy replies (ending at <|im_end|>), "
          f"largest logit difference {difference:.3f}, adapter's margins where they differ: "
          f"{[round(margin, 2) for margin in margins]}")
    assert same >= len(expected) - may_differ  # same answers, each stopping right after it as the adapter's does
    assert all(reply[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>") for reply in replies)
    assert difference < tolerance


def test_the_gguf_header_names_the_tokenizer_eos_and_template_llama_cpp_needs(gguf_folder, smollm2_trained):
    from gguf import GGUFReader

    tokenizer = smollm2_trained.tokenizer
    for quantization in ("f16", "q8_0"):
        fields = GGUFReader(gguf_folder / f"model-{quantization}.gguf").fields
        value = {name: fields[name].contents() for name in (
            "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.eos_token_id", "tokenizer.chat_template",
            "general.name")}
        # A byte-level BPE vocabulary named as such: llama.cpp (and Ollama) then split text as transformers does.
        assert value["tokenizer.ggml.model"] == "gpt2" and value["tokenizer.ggml.pre"] == "smollm"
        assert value["tokenizer.ggml.eos_token_id"] == tokenizer.convert_tokens_to_ids("<|im_end|>")
        assert value["tokenizer.chat_template"] == tokenizer.chat_template
        assert value["general.name"] == gguf_folder.name
    saved = json.loads((gguf_folder / "tokenizer.json").read_text())
    own = json.loads(tokenizer.backend_tokenizer.to_str())
    assert saved["model"] == own["model"]  # the saved folder keeps the tokenizer as transformers built it
    assert "FROM ./model-q8_0.gguf" in (gguf_folder / "Modelfile").read_text()


def test_the_ollama_modelfile_follows_smollm2s_chatml_template(smollm2_trained):
    tokenizer = smollm2_trained.tokenizer
    modelfile = ollama_modelfile(tokenizer)
    template = re.search(r'TEMPLATE """(.*?)"""', modelfile, re.DOTALL).group(1)
    stops = [json.loads(stop) for stop in re.findall(r"PARAMETER stop (.*)", modelfile)]
    assert stops[0] == "<|im_end|>" == tokenizer.eos_token
    assert stops == ollama_stops(tokenizer, chat_template_parts(tokenizer))
    conversations = [
        [{"role": "user", "content": "Is Acme up?"}],  # the template adds its default system turn
        [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Acme?"}],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
         {"role": "user", "content": "Acme shares rose. Positive or negative?"}],
    ]
    for messages in conversations:
        assert go_template_render(template, messages) == tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True)


def test_load_model_reads_an_exported_gguf_back_beside_its_other_files(gguf_folder, reference, smollm2_trained,
                                                                      monkeypatch, tmp_path):
    """ftlib's own loader on the exported file: the folder also holds tokenizer files, which must not hide the
    file's special tokens; the copy answers like the adapter and stops at <|im_end|>."""
    monkeypatch.setenv("FTLIB_CACHE", str(tmp_path / "cache"))
    questions, expected, _ = reference
    with all_cores():
        model, tokenizer = load_model(str(gguf_folder / "model-f16.gguf"), load_in_4bit=False)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template == smollm2_trained.tokenizer.chat_template
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    replies, _ = greedy_run(model, tokenizer, questions)
    assert replies == expected
