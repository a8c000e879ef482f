"""generate, streaming, chat and the terminal chat loop, on the tiny demo model (CPU, full precision)."""

import pytest
import torch

from ftlib.errors import FtlibError
from ftlib.generation import chat, generate, run_chat, stop_token_ids, stream

PROMPT = "Acme shares rose after strong sales. Positive or negative?"


def raw_greedy_ids(model, tokenizer, text, max_new_tokens, eos_token_id=None):
    """Greedy new-token ids straight from transformers, with no stopping (the reference)."""
    bos = tokenizer.bos_token
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=not text.startswith(bos))["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


def test_string_and_messages_give_the_chat_template_prompt(tiny_model):
    model, tokenizer = tiny_model
    text = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False,
                                         add_generation_prompt=True)
    expected_ids = raw_greedy_ids(model, tokenizer, text, 12)
    reply = generate(model, tokenizer, PROMPT, max_new_tokens=12)
    assert reply == generate(model, tokenizer, [{"role": "user", "content": PROMPT}], max_new_tokens=12)
    stops = stop_token_ids(model, tokenizer)
    if not any(token in stops for token in expected_ids):
        assert reply == tokenizer.decode(expected_ids, skip_special_tokens=True)


def test_use_chat_template_false_feeds_the_text_as_is(tiny_model):
    model, tokenizer = tiny_model
    text = tokenizer.bos_token + "Acme shares"  # starts with BOS text, as format_dataset's prompts do
    expected = raw_greedy_ids(model, tokenizer, text, 10, eos_token_id=tokenizer.eos_token_id)
    reply = generate(model, tokenizer, text, max_new_tokens=10, use_chat_template=False)
    cut = [t for t in expected[: next((i for i, t in enumerate(expected) if t == tokenizer.eos_token_id),
                                       len(expected))]]
    assert reply == tokenizer.decode(cut, skip_special_tokens=True)


def test_batch_with_left_padding_matches_one_at_a_time(tiny_model):
    model, tokenizer = tiny_model
    prompts = ["Hi", PROMPT, "Shares of Globex fell sharply after the company missed its targets today."]
    batch = generate(model, tokenizer, prompts, max_new_tokens=6)
    assert isinstance(batch, list) and len(batch) == 3
    assert batch == [generate(model, tokenizer, prompt, max_new_tokens=6) for prompt in prompts]
    conversations = [[{"role": "user", "content": p}] for p in prompts]
    assert generate(model, tokenizer, conversations, max_new_tokens=6) == batch
    assert tokenizer.padding_side == "right"  # generate restores the tokenizer's setting


def test_generation_stops_at_a_stop_token(tiny_model):
    model, tokenizer = tiny_model
    # Make a token the model writes a little way in a stop token (as EOS is): the reply must end
    # right before it. Search a few prompts for a run whose tokens vary (an untrained model repeats).
    for prompt in (PROMPT, "Acme shares", "The", "Globex"):
        free_run = raw_greedy_ids(model, tokenizer, prompt, 10)
        end = free_run.index(tokenizer.eos_token_id) if tokenizer.eos_token_id in free_run else len(free_run)
        firsts = [i for i in range(end) if free_run[i] not in free_run[:i]]
        if firsts and firsts[-1] > 0:
            break
    position = firsts[-1]
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, free_run[position]]
    reply = generate(model, tokenizer, prompt, max_new_tokens=10, use_chat_template=False)
    assert reply == tokenizer.decode(free_run[:position], skip_special_tokens=True)
    # In a batch, a row that stopped early is cut at its stop token too.
    batch = generate(model, tokenizer, [prompt, "Hi"], max_new_tokens=10, use_chat_template=False)
    assert batch[0] == reply


def test_generate_puts_the_model_in_inference_mode(tiny_model):
    model, tokenizer = tiny_model
    model.train()
    model.config.use_cache = False  # as training with gradient checkpointing leaves it
    generate(model, tokenizer, "Hi", max_new_tokens=2)
    assert not model.training
    assert model.config.use_cache is True


def test_streaming_yields_the_same_text_as_generate(tiny_model, capsys):
    model, tokenizer = tiny_model
    options = dict(max_new_tokens=24, use_chat_template=False)  # a plain continuation: a long reply
    expected = generate(model, tokenizer, "Acme shares", **options)
    capsys.readouterr()
    assert generate(model, tokenizer, "Acme shares", print_tokens=True, **options) == expected
    assert capsys.readouterr().out == expected + "\n"
    pieces = list(stream(model, tokenizer, "Acme shares", **options))
    assert "".join(pieces) == expected
    if len(tokenizer(expected)["input_ids"]) > 2:
        assert len(pieces) > 1  # really piece by piece, not one block at the end


def test_leaving_a_stream_early_stops_generating(tiny_model):
    model, tokenizer = tiny_model
    steps = []
    hook = model.register_forward_hook(lambda module, args, output: steps.append(1))
    pieces = stream(model, tokenizer, "Acme shares", max_new_tokens=200, use_chat_template=False)
    next(pieces)
    pieces.close()  # as when a loop breaks or Ctrl-C interrupts a notebook cell
    hook.remove()
    assert len(steps) < 50


def test_sampling_repeats_with_a_seed_and_varies_without(tiny_model, capsys):
    model, tokenizer = tiny_model
    options = dict(max_new_tokens=8, temperature=1.0, top_p=0.95, min_p=0.01)
    first = generate(model, tokenizer, PROMPT, seed=1, **options)
    assert generate(model, tokenizer, PROMPT, seed=1, **options) == first
    others = {generate(model, tokenizer, PROMPT, seed=seed, **options) for seed in (2, 3)}
    assert others != {first}
    streamed = generate(model, tokenizer, PROMPT, seed=1, print_tokens=True, **options)
    assert streamed == first


def test_chat_carries_the_conversation(tiny_model):
    model, tokenizer = tiny_model
    history = []
    first = chat(model, tokenizer, "Hello", history, system_prompt="Answer briefly.", max_new_tokens=8)
    assert history == [{"role": "system", "content": "Answer briefly."},
                       {"role": "user", "content": "Hello"}, {"role": "assistant", "content": first}]
    second = chat(model, tokenizer, "And Acme?", history, max_new_tokens=8)
    assert len(history) == 5 and history[-1] == {"role": "assistant", "content": second}
    assert second == generate(model, tokenizer, history[:4], max_new_tokens=8)


def test_run_chat_loop_streams_and_resets(tiny_model, capsys, monkeypatch):
    model, tokenizer = tiny_model
    typed = iter(["Hello", "/reset", "Acme?", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(typed))
    history = run_chat(model, tokenizer, max_new_tokens=6)
    shown = capsys.readouterr().out
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert history[0]["content"] == "Acme?"
    assert history[1]["content"] == generate(model, tokenizer, "Acme?", max_new_tokens=6)
    assert "conversation cleared" in shown
    assert shown.count("model> ") == 2


def test_run_chat_ends_on_end_of_input(tiny_model, monkeypatch):
    model, tokenizer = tiny_model

    def no_more_input(prompt=""):
        raise EOFError

    monkeypatch.setattr("builtins.input", no_more_input)
    assert run_chat(model, tokenizer) == []


@pytest.mark.parametrize(
    "prompt, options, fix",
    [
        ("Hi", {"max_new_tokens": 0}, "max_new_tokens"),
        ("Hi", {"temperature": -1}, "temperature"),
        ("Hi", {"top_p": 0}, "top_p"),
        ("Hi", {"min_p": 1.5}, "min_p"),
        (["a", "b"], {"print_tokens": True}, "leave print_tokens out"),
        ("Hi", {"top_p": 0.9}, "temperature=0.7"),
        ("Hi", {"top_k": 40, "min_p": 0.05}, "leave min_p, top_k out"),
        ([], {}, "a string"),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], {}, "append"),
        ([{"role": "robot", "content": "a"}], {}, "role"),
        ([{"role": "user", "content": "a"}], {"use_chat_template": False}, "use_chat_template=True"),
    ],
)
def test_bad_input_names_the_fix(tiny_model, prompt, options, fix):
    model, tokenizer = tiny_model
    with pytest.raises(FtlibError, match=fix):
        generate(model, tokenizer, prompt, **options)


def test_chat_messages_without_a_template_name_the_fix(tiny_model):
    model, tokenizer = tiny_model
    tokenizer.chat_template = None
    with pytest.raises(FtlibError, match="chat_template"):
        generate(model, tokenizer, [{"role": "user", "content": "Hi"}])
    assert isinstance(generate(model, tokenizer, "Hi", max_new_tokens=3), str)  # plain text still works


def test_options_after_the_prompt_are_keyword_only(tiny_model):
    model, tokenizer = tiny_model
    with pytest.raises(TypeError):
        generate(model, tokenizer, "Hi", 8)  # max_new_tokens must be named
    with pytest.raises(TypeError):
        chat(model, tokenizer, "Hi", [], "Be brief.")  # system_prompt must be named
    with pytest.raises(TypeError):
        generate(model, tokenizer, "Hi", stream=True)  # streaming is stream(), or print_tokens=True


def test_chat_refuses_a_system_prompt_the_history_contradicts(tiny_model):
    model, tokenizer = tiny_model
    history = [{"role": "system", "content": "Answer briefly."}]
    chat(model, tokenizer, "Hi", history, system_prompt="Answer briefly.", max_new_tokens=2)  # the same: fine
    assert len(history) == 3
    with pytest.raises(FtlibError, match="leave system_prompt out.*new history"):
        chat(model, tokenizer, "Hi", history, system_prompt="Answer at length.", max_new_tokens=2)
    assert len(history) == 3  # unchanged by the refused turn


def test_run_chat_refuses_arguments_it_would_ignore(tiny_model, tiny_path):
    model, tokenizer = tiny_model
    with pytest.raises(FtlibError, match=r"run_chat\(folder\) alone"):
        run_chat(str(tiny_path), tokenizer)
    with pytest.raises(FtlibError, match="leave load_in_4bit out"):
        run_chat(model, tokenizer, load_in_4bit=True)
