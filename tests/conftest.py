"""Shared fixtures: the tiny demo model, offline, on the CPU, in full precision."""

import os

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
