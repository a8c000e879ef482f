"""Continued pretraining through train(method="pretrain"): packing, perplexity, the embeddings' own rate."""

import pytest
import torch

from ftlib import add_lora, load_model, train
from ftlib.demo.domain_text import load_domain_text, make_domain_splits
from ftlib.errors import FtlibError
from ftlib.training.pretraining import PretrainingTrainer, pack, perplexity, read_documents


def test_pack_lays_documents_end_to_end_in_full_blocks(tiny_tokenizer):
    texts = ["Harbour log, first watch.", "The Sea Heron left the north dock.", "Customs cleared ten crates."]
    blocks = pack(texts, tiny_tokenizer, 8)
    stream = [token for text in texts
              for token in tiny_tokenizer(text, add_special_tokens=False)["input_ids"] + [tiny_tokenizer.eos_token_id]]
    assert all(len(block) == 8 for block in blocks)
    assert [token for block in blocks for token in block] == stream[:8 * len(blocks)]


def test_a_folder_of_documents_is_read_and_bad_text_is_refused(tmp_path):
    (tmp_path / "a.txt").write_text("first document")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "b.md").write_text("second document")
    (tmp_path / "skip.bin").write_bytes(b"\x00")
    assert read_documents(tmp_path) == ["first document", "second document"]
    with pytest.raises(FtlibError, match="text row 1 holds int, not text"):
        read_documents(["fine", 3])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FtlibError, match="holds no .txt or .md files"):
        read_documents(empty)


@pytest.mark.slow
def test_pretraining_lowers_held_out_perplexity_on_domain_text():
    model, tokenizer = load_model("ftlib-tiny", load_in_4bit=False, max_seq_length=128)
    model = add_lora(model, r=16, use_gradient_checkpointing=False)
    held_out = load_domain_text("test")
    before = perplexity(model, tokenizer, held_out, max_seq_length=128)
    history = train(model, tokenizer, {"train": load_domain_text("train"), "test": held_out}, method="pretrain",
                    max_steps=30, learning_rate=2e-3, max_seq_length=128, verbose=False)
    after = perplexity(model, tokenizer, held_out, max_seq_length=128)
    assert after < 0.7 * before, (before, after)
    assert history.eval_loss[-1] < history.eval_loss[0]
    assert model.ftlib_training["method"] == "pretrain" and model.ftlib_training["data_shape"] == "raw text"


def test_embedding_learning_rate_puts_embeddings_and_head_on_their_own_rate():
    model, tokenizer = load_model("ftlib-tiny", load_in_4bit=False, max_seq_length=64, full_finetuning=True)
    embedding = model.get_input_embeddings().weight
    before = embedding.detach().clone()
    captured = {}

    class Capture(PretrainingTrainer):
        def create_optimizer(self, model=None):
            captured["optimizer"] = super().create_optimizer(model)
            return captured["optimizer"]

    import ftlib.training.pretraining as pretraining

    original = pretraining.PRETRAIN
    pretraining.PRETRAIN = type(original)(**{**original.__dict__, "trainer_class": lambda: Capture})
    try:
        train(model, tokenizer, make_domain_splits(train_size=40, test_size=2)["train"], method="pretrain",
              max_steps=3, learning_rate=1e-3, embedding_learning_rate=1e-4, max_seq_length=64, verbose=False)
    finally:
        pretraining.PRETRAIN = original
    rates = {id(parameter): group["initial_lr"] for group in captured["optimizer"].param_groups
             for parameter in group["params"]}
    assert rates[id(embedding)] == pytest.approx(1e-4)
    assert rates[id(model.model.layers[0].self_attn.q_proj.weight)] == pytest.approx(1e-3)
    assert not torch.equal(before, embedding.detach())


def test_embedding_learning_rate_on_a_lora_model_is_refused():
    model, tokenizer = load_model("ftlib-tiny", load_in_4bit=False, max_seq_length=64)
    model = add_lora(model, r=4, use_gradient_checkpointing=False)
    with pytest.raises(FtlibError, match="embeddings and output head are frozen"):
        train(model, tokenizer, ["some text"] * 8, method="pretrain", max_steps=1, embedding_learning_rate=1e-5,
              max_seq_length=64, verbose=False)


def test_committed_domain_text_is_what_the_generator_writes_and_held_out_ships_are_new(tmp_path):
    from ftlib.demo import DATA_FOLDER
    from ftlib.demo.domain_text import ship_names, write_domain_text

    for name, path in write_domain_text(tmp_path).items():
        assert path.read_text() == (DATA_FOLDER / "domain_text" / path.name).read_text(), name
    ships = ship_names()
    train_text = " ".join(row["text"] for row in load_domain_text("train"))
    held_out_ships = {ship for ship in ships if any(ship in row["text"] for row in load_domain_text("test"))}
    assert held_out_ships and not any(ship in train_text for ship in held_out_ships)
