"""The offline demo world: generators repeat, splits are clean, the corpus never shows the task,
and the committed tiny model and tokenizer load offline and behave as a chat model's should."""

import json
import math
import re
from pathlib import Path

import pytest
import torch

import ftlib.demo
from ftlib.demo import DATA_FOLDER, DEMO_ALIAS, SAMPLE_FILES, load_headlines, sample_file, tiny_model_path
from ftlib.demo.corpus import make_corpus
from ftlib.demo.headlines import LABELS, label_of, make_splits, same_label, write_splits
from ftlib.demo.samples import SAMPLE_ROWS, write_samples
from ftlib.demo.world import company_names
from ftlib.errors import FtlibError


def headline_and_company(question):
    match = re.fullmatch(r"Headline: (.+)\nDoes this headline impact (.+) positively or negatively\?", question)
    assert match, f"question not in the task's shape: {question!r}"
    return match.group(1), match.group(2)


@pytest.fixture(scope="module")
def corpus():
    return make_corpus()


def test_headline_generator_is_deterministic():
    assert make_splits(seed=0) == make_splits(seed=0)
    assert make_splits(seed=0)["test"] != make_splits(seed=1)["test"]


def test_committed_headlines_are_what_the_generator_writes(tmp_path):
    written = write_splits(tmp_path)
    assert sorted(written) == ["test", "test_reasons", "train", "train_reasons"]
    for name, path in written.items():
        assert path.read_text() == (DATA_FOLDER / "headlines" / path.name).read_text(), name
    assert load_headlines("test", reasons=True)[0]["answer"] == json.loads(
        written["test_reasons"].read_text().splitlines()[0])["answer"]


def test_committed_sample_files_are_what_the_script_writes(tmp_path):
    written = write_samples(tmp_path)
    assert sorted(written) == sorted(SAMPLE_FILES)
    for name, path in written.items():
        assert path.read_text() == sample_file(name).read_text(), f"{name}: run python -m ftlib.demo.samples"


def test_sample_csv_and_jsonl_hold_the_same_examples_and_format_to_the_same_text(tiny_tokenizer):
    from ftlib import format_dataset

    table = format_dataset(sample_file("my_data.csv"), tiny_tokenizer, verbose=False)
    chats = format_dataset(sample_file("my_data.jsonl"), tiny_tokenizer, verbose=False)
    assert len(table) == len(chats) == SAMPLE_ROWS
    assert table["text"] == chats["text"] and table["labels"] == chats["labels"]
    assert [label_of(answer) for answer in table["completion"]] == [
        label_of(row["answer"]) for row in load_headlines("train", reasons=True)[:SAMPLE_ROWS]]
    with pytest.raises(FtlibError, match="my_data.csv"):
        sample_file("mine.csv")


def test_reasoned_rows_keep_the_question_and_label_and_vary_their_wording():
    plain, reasoned = load_headlines("train"), load_headlines("train", reasons=True)
    assert len(plain) == len(reasoned)
    for one_word, with_reason in zip(plain, reasoned):
        assert with_reason["question"].startswith(one_word["question"])
        assert label_of(with_reason["answer"]) == one_word["answer"]
        assert len(with_reason["answer"].split()) >= 5  # the word and a sentence
    # Many wordings per label: a right answer is not one fixed string, so the loss cannot reach 0.
    assert len({row["answer"] for row in reasoned if label_of(row["answer"]) == "positive"}) >= 30


def test_same_label_scores_the_first_word_only():
    assert same_label("Positive. The stock should climb.", "Positive. Investors will probably cheer.")
    assert not same_label("Negative. The stock should slide.", "Positive. The stock should climb.")
    assert not same_label("The stock should climb.", "Positive. The stock should climb.")
    assert label_of("negative") == "negative" and label_of("") is None


def test_train_and_test_share_no_headline_and_no_company():
    train, test = load_headlines("train"), load_headlines("test")
    train_headlines = {headline_and_company(row["question"])[0] for row in train}
    test_headlines = {headline_and_company(row["question"])[0] for row in test}
    assert len(train_headlines) == len(train) and len(test_headlines) == len(test) == 64
    assert not train_headlines & test_headlines
    test_companies = {headline_and_company(row["question"])[1] for row in test}
    train_text = "\n".join(row["question"] for row in train)
    assert test_companies and not [name for name in test_companies if name in train_text]
    # Each question asks about a company its headline names.
    assert all(company in headline for headline, company in map(headline_and_company, (r["question"] for r in test)))


@pytest.mark.parametrize("split", ["train", "test"])
def test_labels_are_the_two_answers_and_balanced(split):
    answers = [row["answer"] for row in load_headlines(split)]
    assert set(answers) == set(LABELS)
    assert answers.count("positive") == answers.count("negative")


def test_corpus_generator_is_deterministic():
    assert make_corpus(documents=300, seed=0) == make_corpus(documents=300, seed=0)
    assert make_corpus(documents=300, seed=0) != make_corpus(documents=300, seed=1)


def test_corpus_never_holds_the_task_wording(corpus):
    text = "\n".join(corpus).lower()
    for wording in ["headline", "positively", "negatively", "impact", "does this"]:
        assert wording not in text, f"the pretraining corpus contains the task's wording {wording!r}"


def test_corpus_never_pairs_company_news_with_the_answer_words(corpus):
    companies = set(company_names(120, seed=1000)) | set(company_names(60, seed=0))
    news = [document for document in corpus if any(name in document for name in companies)]
    assert len(news) > len(corpus) // 3  # the world knowledge is there ...
    paired = [document for document in news if re.search(r"positive|negative", document, re.IGNORECASE)]
    assert not paired, f"company news mentions an answer word: {paired[:2]}"  # ... the labels are not


def test_corpus_teaches_the_answer_words_and_consequences(corpus):
    text = "\n".join(corpus)
    for phrase in [" positive", " negative", "\npositive", "\nnegative", "shares rose", "investors worried"]:
        assert text.count(phrase) >= 50, f"the corpus rarely says {phrase!r}"


def test_tokenizer_round_trips_any_text(tiny_tokenizer):
    texts = ["Velex Foods cuts 7 hundred jobs", "Zoë paid 5 € for crème brûlée 🙂", "日本語のテキスト",
             "  tabs\tand\nnew lines  ", "<not a special token>"]
    for text in texts:
        assert tiny_tokenizer.decode(tiny_tokenizer(text)["input_ids"]) == text
    assert len(tiny_tokenizer) == 1024


def test_chat_template_ends_the_assistant_turn_with_eos(tiny_tokenizer):
    tokenizer = tiny_tokenizer
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello?"},
                    {"role": "assistant", "content": "Hi."}]
    text = tokenizer.apply_chat_template(conversation, tokenize=False)
    assert text.endswith("Hi." + tokenizer.eos_token)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id and ids.count(tokenizer.bos_token_id) == 1
    prompt = tokenizer.apply_chat_template(conversation[:2], tokenize=False, add_generation_prompt=True)
    assert text.startswith(prompt) and prompt.endswith("<|assistant|>\n")
    masked = tokenizer.apply_chat_template(conversation, return_dict=True, return_assistant_tokens_mask=True)
    answer = [token for token, in_answer in zip(masked["input_ids"], masked["assistant_masks"]) if in_answer]
    assert tokenizer.decode(answer) == "Hi." + tokenizer.eos_token
    with pytest.raises(Exception, match="roles system, user and assistant"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_committed_model_loads_offline_and_is_pretrained(tiny_path, tiny_tokenizer, corpus):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_path, local_files_only=True)
    assert model.config.model_type == "llama" and model.config.vocab_size == len(tiny_tokenizer)
    assert model.generation_config.eos_token_id == tiny_tokenizer.eos_token_id
    assert sum(path.stat().st_size for path in tiny_path.iterdir()) < 10_000_000
    # Pretrained: next-token loss on generic text far below a random model's log(1024) ≈ 6.9.
    ids = tiny_tokenizer("\n".join(corpus[-40:]), return_tensors="pt")["input_ids"][:, :512]
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert loss < 0.5 * math.log(1024), f"loss {loss:.2f}: the committed model looks untrained"


def test_base_model_has_not_learned_the_task(tiny_path, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    from ftlib.demo.verify import accuracy

    model = AutoModelForCausalLM.from_pretrained(tiny_path, local_files_only=True)
    assert accuracy(model, tiny_tokenizer, load_headlines("test")) <= 0.30


def test_committed_tokenizer_is_what_the_corpus_trains(tiny_tokenizer, corpus):
    from ftlib.demo.tokenizer import train_tokenizer

    assert train_tokenizer(corpus).get_vocab() == tiny_tokenizer.get_vocab()


def test_missing_demo_files_raise_an_error_naming_the_rebuild_command(monkeypatch, tmp_path):
    assert tiny_model_path().name == DEMO_ALIAS
    monkeypatch.setattr(ftlib.demo, "DATA_FOLDER", tmp_path)
    with pytest.raises(FtlibError, match="python -m ftlib.demo.pretrain"):
        tiny_model_path()
    with pytest.raises(FtlibError, match="python -m ftlib.demo.headlines"):
        load_headlines("test")
    with pytest.raises(FtlibError, match="python -m ftlib.demo.samples"):
        sample_file("my_data.csv")
    with pytest.raises(FtlibError, match='use "train" or "test"'):
        load_headlines("validation")


def test_a_checkout_reads_the_demo_data_at_the_repository_root():
    # An installed wheel carries the data in ftlib/demo/data/ (tests/test_project.py builds one); a checkout,
    # editable install included, must read data/ itself, not a stale copy that would shadow it.
    root = Path(__file__).resolve().parents[1]
    if Path(ftlib.demo.__file__).resolve().parents[2] != root:
        pytest.skip("ftlib is not imported from this checkout")
    assert not (root / "ftlib" / "demo" / "data").exists(), "remove ftlib/demo/data/: the demo data lives in data/"
    assert tiny_model_path() == root / "data" / DEMO_ALIAS
