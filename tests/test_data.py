"""format_dataset on the tiny model's tokenizer: every shape, template, split, report and bad input.

The checks look at the produced text and labels themselves: the masked tokens are exactly the
prompt's tokens, and the answer plus EOS is what stays trainable.
"""

import copy
import json
import warnings

import pytest

from ftlib.data.formatting import IGNORE_INDEX, format_dataset, length_report, marked_example, show_example
from ftlib.errors import FtlibError

QA_ROWS = [
    {"question": "Headline: Tamora Shipping sales drop\nImpact?", "answer": "negative"},
    {"question": "Headline: Torica Retail wins contract\nImpact?", "answer": "positive"},
    {"question": "Headline: Tamtek Mining cuts dividend\nImpact?", "answer": "negative"},
]
CONVERSATION = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "Shares rose. Impact?"},
    {"role": "assistant", "content": "positive"},
    {"role": "user", "content": "And if shares fell?"},
    {"role": "assistant", "content": "negative"},
]


@pytest.fixture
def tokenizer(tiny_tokenizer):
    return tiny_tokenizer


@pytest.fixture
def plain_tokenizer(tiny_tokenizer):
    """The same vocabulary without a chat template, like a base model's tokenizer."""
    bare = copy.deepcopy(tiny_tokenizer)
    bare.chat_template = None
    return bare


def quiet(data, tokenizer, **options):
    return format_dataset(data, tokenizer, verbose=False, **options)


def chat(tokenizer, messages, generation_prompt=False):
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def trained_runs(example, tokenizer):
    """The decoded runs of consecutive trained tokens."""
    runs, current = [], []
    for token, label in zip(example["input_ids"], example["labels"]):
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            assert label == token  # a trained label is the token itself (the trainer shifts it)
            current.append(token)
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


def assert_prompt_masked(example, tokenizer):
    """Masked tokens are exactly the prompt's tokens; completion + EOS is trainable, nothing else."""
    prompt_ids = tokenizer(example["prompt"], add_special_tokens=False)["input_ids"]
    count = len(prompt_ids)
    assert example["input_ids"][:count] == prompt_ids
    assert example["labels"][:count] == [IGNORE_INDEX] * count
    assert example["labels"][count:] == example["input_ids"][count:]
    assert tokenizer.decode(example["input_ids"][count:]) == example["completion"] + tokenizer.eos_token
    assert example["input_ids"][-1] == tokenizer.eos_token_id
    assert example["attention_mask"] == [1] * len(example["input_ids"])
    assert example["text"] == example["prompt"] + example["completion"] + tokenizer.eos_token


# ---- question/answer rows ------------------------------------------------------------------


def test_qa_rows_use_the_tokenizers_chat_template_and_train_only_the_answer(tokenizer):
    dataset = quiet(QA_ROWS, tokenizer)
    assert dataset.column_names == ["text", "prompt", "completion", "input_ids", "attention_mask", "labels"]
    assert dataset.ftlib_shape == "qa"
    for row, example in zip(QA_ROWS, dataset):
        messages = [{"role": "user", "content": row["question"]}, {"role": "assistant", "content": row["answer"]}]
        assert example["text"] == chat(tokenizer, messages)  # the demo template already ends with EOS
        assert example["prompt"] == chat(tokenizer, messages[:1], generation_prompt=True)
        assert example["completion"] == row["answer"]
        assert_prompt_masked(example, tokenizer)
        assert trained_runs(example, tokenizer) == [row["answer"] + tokenizer.eos_token]


def test_every_container_gives_the_same_result(tokenizer):
    import pandas
    from datasets import Dataset

    expected = quiet(QA_ROWS, tokenizer).to_list()
    assert quiet(Dataset.from_list(QA_ROWS), tokenizer).to_list() == expected
    assert quiet(pandas.DataFrame(QA_ROWS), tokenizer).to_list() == expected
    columns = {"question": [r["question"] for r in QA_ROWS], "answer": [r["answer"] for r in QA_ROWS]}
    assert quiet(columns, tokenizer).to_list() == expected


@pytest.mark.parametrize("question, answer", [("prompt", "response"), ("input", "output"), ("instruction", "output")])
def test_question_answer_aliases(tokenizer, question, answer):
    rows = [{question: row["question"], answer: row["answer"]} for row in QA_ROWS]
    assert quiet(rows, tokenizer)["text"] == quiet(QA_ROWS, tokenizer)["text"]


def test_custom_column_names_and_system_prompt(tokenizer):
    rows = [{"headline": row["question"], "label": row["answer"], "id": 7} for row in QA_ROWS]
    dataset = quiet(rows, tokenizer, question_column="headline", answer_column="label", system_prompt="Be brief.")
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": QA_ROWS[0]["question"]},
        {"role": "assistant", "content": QA_ROWS[0]["answer"]},
    ]
    assert dataset[0]["text"] == chat(tokenizer, messages)
    assert_prompt_masked(dataset[0], tokenizer)


def test_loss_on_everything_when_asked(tokenizer):
    example = quiet(QA_ROWS, tokenizer, train_on_responses_only=False)[0]
    assert example["labels"] == example["input_ids"]


# ---- Alpaca, conversations, prompt/completion, raw text ---------------------------------------

ALPACA_ROWS = [
    {"instruction": "Classify the headline.", "input": "Shares rose 5%", "output": "positive"},
    {"instruction": "Say hello.", "input": "", "output": "hello"},
]


def test_alpaca_rows_with_the_tokenizers_template(tokenizer):
    dataset = quiet(ALPACA_ROWS, tokenizer)
    assert dataset.ftlib_shape == "alpaca"
    with_input = [
        {"role": "user", "content": "Classify the headline.\n\nShares rose 5%"},
        {"role": "assistant", "content": "positive"},
    ]
    empty_input = [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "hello"}]
    assert dataset["text"] == [chat(tokenizer, with_input), chat(tokenizer, empty_input)]
    for example in dataset:
        assert_prompt_masked(example, tokenizer)


def test_alpaca_template_writes_the_input_section_only_when_there_is_one(tokenizer):
    dataset = quiet(ALPACA_ROWS, tokenizer, template="alpaca")
    first, second = dataset
    assert first["prompt"].endswith(
        "### Instruction:\nClassify the headline.\n\n### Input:\nShares rose 5%\n\n### Response:\n"
    )
    assert "### Input:" not in second["text"]
    assert second["prompt"].endswith("### Instruction:\nSay hello.\n\n### Response:\n")
    for example in dataset:
        assert_prompt_masked(example, tokenizer)


def test_tokenizer_without_template_falls_back_to_alpaca(plain_tokenizer):
    example = quiet(QA_ROWS, plain_tokenizer)[0]
    assert example["prompt"].startswith("Below is an instruction")
    assert example["prompt"].endswith("### Response:\n")
    assert_prompt_masked(example, plain_tokenizer)
    with pytest.raises(FtlibError, match="has no chat template.*template='chatml'"):
        quiet(QA_ROWS, plain_tokenizer, template="tokenizer")


@pytest.mark.parametrize("name, marker", [("chatml", "<|im_end|>"), ("llama-3", "<|eot_id|>")])
def test_built_in_chat_templates_warn_when_end_of_turn_is_not_eos(tokenizer, name, marker):
    with pytest.warns(UserWarning, match=f"ends each assistant turn with '{marker}'.*eos_token"):
        example = quiet(QA_ROWS, tokenizer, template=name)[0]
    assert example["text"].endswith(QA_ROWS[0]["answer"] + marker + tokenizer.eos_token)
    assert trained_runs(example, tokenizer) == [QA_ROWS[0]["answer"] + marker + tokenizer.eos_token]
    prompt_ids = tokenizer(example["prompt"], add_special_tokens=False)["input_ids"]
    assert example["labels"][: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)


def test_template_that_ends_turns_with_eos_gives_no_warning(tokenizer):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet(QA_ROWS, tokenizer)
        quiet(QA_ROWS, tokenizer, template="alpaca")


def test_openai_messages_train_every_assistant_turn_and_mask_system_and_user(tokenizer):
    example = quiet([{"messages": CONVERSATION}], tokenizer)[0]
    assert example["text"] == chat(tokenizer, CONVERSATION)
    assert example["prompt"] == chat(tokenizer, CONVERSATION[:-1], generation_prompt=True)
    assert example["completion"] == "negative"
    assert trained_runs(example, tokenizer) == ["positive" + tokenizer.eos_token, "negative" + tokenizer.eos_token]


def test_sharegpt_gives_the_same_as_openai_messages(tokenizer):
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    sharegpt = [{"conversations": [{"from": names[m["role"]], "value": m["content"]} for m in CONVERSATION]}]
    dataset = quiet(sharegpt, tokenizer)
    assert dataset.ftlib_shape == "sharegpt"
    assert dataset.to_list() == quiet([{"messages": CONVERSATION}], tokenizer).to_list()


def test_conversations_from_a_dataframe_read_from_parquet(tokenizer, tmp_path):
    import pandas

    pandas.DataFrame([{"messages": CONVERSATION}]).to_parquet(tmp_path / "chat.parquet")
    frame = pandas.read_parquet(tmp_path / "chat.parquet")  # turns come back as numpy arrays
    expected = quiet([{"messages": CONVERSATION}], tokenizer).to_list()
    assert quiet(frame, tokenizer).to_list() == expected
    assert quiet(tmp_path / "chat.parquet", tokenizer).to_list() == expected


def test_conversations_with_a_built_in_template(tokenizer):
    with pytest.warns(UserWarning):
        example = quiet([{"messages": CONVERSATION}], tokenizer, template="chatml")[0]
    assert example["text"].startswith("<|im_start|>system\nAnswer in one word.<|im_end|>\n<|im_start|>user\n")
    # the newline after each <|im_end|> belongs to the template, not to the reply
    assert trained_runs(example, tokenizer) == ["positive<|im_end|>", "negative<|im_end|>" + tokenizer.eos_token]


def test_prompt_completion_pairs_are_joined_as_plain_text(tokenizer):
    rows = [{"prompt": "The capital of France is", "completion": " Paris."}]
    example = quiet(rows, tokenizer)[0]
    assert example["text"] == "The capital of France is Paris." + tokenizer.eos_token
    assert example["prompt"] == "The capital of France is"
    assert_prompt_masked(example, tokenizer)


def test_raw_text_is_chunked_to_max_seq_length_and_fully_trained(tokenizer):
    document = "Shares of Tamora Shipping rose after strong sales. Investors cheered the news. " * 12
    dataset = quiet([{"text": document}, {"text": "A short note."}], tokenizer, max_seq_length=32)
    assert dataset.ftlib_shape == "text"
    assert all(len(ids) <= 32 for ids in dataset["input_ids"])
    assert all(example["labels"] == example["input_ids"] for example in dataset)
    assert set(dataset["prompt"]) == {""} and set(dataset["completion"]) == {""}
    texts = list(dataset["text"])
    eos = tokenizer.eos_token
    assert texts[-1] == "A short note." + eos
    long_pieces = texts[:-1]
    assert len(long_pieces) > 1
    assert "".join(long_pieces) == document + eos  # pieces are the document, in order, EOS once at its end
    assert [piece.endswith(eos) for piece in long_pieces] == [False] * (len(long_pieces) - 1) + [True]
    all_ids = [token for ids in dataset["input_ids"][:-1] for token in ids]
    assert all_ids == tokenizer(document, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def test_a_list_of_strings_is_raw_text(tokenizer):
    example = quiet(["First document.", "Second one."], tokenizer)[1]
    assert example["text"] == "Second one." + tokenizer.eos_token


# ---- files and folders -----------------------------------------------------------------------


def test_jsonl_json_csv_parquet_files_read_the_same_rows(tokenizer, tmp_path):
    import pandas

    expected = quiet(QA_ROWS, tokenizer).to_list()
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(row) for row in QA_ROWS) + "\n\n")
    (tmp_path / "rows.json").write_text(json.dumps(QA_ROWS))
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": QA_ROWS}))
    pandas.DataFrame(QA_ROWS).to_csv(tmp_path / "rows.csv", index=False)
    pandas.DataFrame(QA_ROWS).to_parquet(tmp_path / "rows.parquet")
    for name in ("rows.jsonl", "rows.json", "wrapped.json", "rows.csv", "rows.parquet"):
        assert quiet(tmp_path / name, tokenizer).to_list() == expected, name
    assert quiet(str(tmp_path / "rows.jsonl"), tokenizer).to_list() == expected


def test_text_file_and_folder_of_text_and_source_files(tokenizer, tmp_path):
    (tmp_path / "notes.txt").write_text("Shares rose.")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Title\nBody.")
    (tmp_path / "docs" / "b.py").write_text("print('hi')\n")
    (tmp_path / "docs" / "image.png").write_bytes(b"\x89PNG")  # not text: skipped
    (tmp_path / "docs" / ".hidden.txt").write_text("secret")
    assert quiet(tmp_path / "notes.txt", tokenizer)["text"] == ["Shares rose." + tokenizer.eos_token]
    folder = quiet(tmp_path / "docs", tokenizer)
    assert folder["text"] == ["# Title\nBody." + tokenizer.eos_token, "print('hi')\n" + tokenizer.eos_token]


def test_the_demo_headlines_file(tokenizer, tiny_path):
    from ftlib.demo import load_headlines

    rows = load_headlines("test")
    dataset = quiet(rows, tokenizer)
    assert len(dataset) == len(rows)
    for example in dataset.select(range(5)):
        assert_prompt_masked(example, tokenizer)
        assert example["completion"] in ("positive", "negative")


# ---- splits, de-duplication, DatasetDict -------------------------------------------------------


def many_rows(count):
    return [{"question": f"Headline number {index}. Impact?", "answer": "positive" if index % 2 else "negative"}
            for index in range(count)]


def test_test_size_splits_with_a_seed(tokenizer):
    rows = many_rows(50)
    first = quiet(rows, tokenizer, test_size=0.2)
    assert (len(first["train"]), len(first["test"])) == (40, 10)
    assert first["train"].ftlib_shape == "qa"
    assert len(length_report(first).lengths) == 50  # the report covers both splits
    again = quiet(rows, tokenizer, test_size=0.2)
    other = quiet(rows, tokenizer, test_size=0.2, seed=1)
    assert first["test"]["text"] == again["test"]["text"]
    assert first["test"]["text"] != other["test"]["text"]
    everything = list(first["train"]["text"]) + list(first["test"]["text"])
    assert sorted(everything) == sorted(quiet(rows, tokenizer)["text"])
    assert len(quiet(rows, tokenizer, test_size=5)["test"]) == 5


def test_deduplicate_drops_repeats_before_splitting(tokenizer):
    rows = many_rows(20) * 3
    splits = quiet(rows, tokenizer, test_size=0.25, deduplicate=True)
    train, test = list(splits["train"]["text"]), list(splits["test"]["text"])
    assert len(train) + len(test) == 20
    assert not set(train) & set(test)
    assert len(quiet(rows, tokenizer)) == 60  # off by default


def test_dataset_dict_keeps_its_splits(tokenizer):
    from datasets import Dataset, DatasetDict

    splits = DatasetDict({"train": Dataset.from_list(many_rows(6)), "validation": Dataset.from_list(QA_ROWS)})
    formatted = quiet(splits, tokenizer)
    assert set(formatted) == {"train", "test"}
    assert formatted["test"]["text"] == quiet(QA_ROWS, tokenizer)["text"]
    resplit = quiet(DatasetDict({"train": Dataset.from_list(many_rows(10))}), tokenizer, test_size=0.2)
    assert (len(resplit["train"]), len(resplit["test"])) == (8, 2)
    with pytest.raises(FtlibError, match="already has the splits.*test_size=None"):
        quiet(splits, tokenizer, test_size=0.2)
    plain = quiet({"train": many_rows(6), "test": QA_ROWS}, tokenizer)  # a plain dict of row lists
    assert plain["test"]["text"] == formatted["test"]["text"] and len(plain["train"]) == 6


# ---- lengths, truncation, showing an example ---------------------------------------------------


def test_too_long_examples_are_truncated_or_dropped_and_reported(tokenizer):
    rows = many_rows(4) + [{"question": "Long headline. " * 40, "answer": "positive"}]
    full_length = len(quiet(rows, tokenizer)[4]["input_ids"])
    with pytest.warns(UserWarning, match="1 of 5 examples are longer than max_seq_length=40.*row 4.*dropped"):
        dropped = quiet(rows, tokenizer, max_seq_length=40, too_long="drop")
    assert len(dropped) == 4
    report = length_report(dropped)
    assert report.over == 1 and max(report.lengths) == full_length
    assert "1 longer than max_seq_length=40 (dropped)" in str(report)
    with pytest.raises(FtlibError, match="no trainable tokens.*row 4.*too_long='drop'"):
        quiet(rows, tokenizer, max_seq_length=40)  # truncation would cut the whole answer off


def test_truncation_keeps_the_start_and_the_trainable_tail(tokenizer):
    rows = [{"question": "Headline. Impact?", "answer": "positive " * 30}]
    full = quiet(rows, tokenizer)[0]
    with pytest.warns(UserWarning, match="truncated"):
        cut = quiet(rows, tokenizer, max_seq_length=30)[0]
    assert cut["input_ids"] == full["input_ids"][:30] and cut["labels"] == full["labels"][:30]
    assert cut["text"] == full["text"]  # the text column keeps the whole example


def test_length_report_text_and_histogram(tokenizer, capsys):
    rows = many_rows(30)
    dataset = format_dataset(rows, tokenizer, max_seq_length=64)
    printed = capsys.readouterr().out
    report = length_report(dataset)
    lengths = [len(ids) for ids in dataset["input_ids"]]
    assert report.lengths == lengths
    assert f"min {min(lengths)}" in str(report) and f"max {max(lengths)}" in str(report)
    assert "none longer than max_seq_length=64" in str(report)
    assert str(report) in printed and "Formatted 30 examples of shape 'qa'" in printed
    assert length_report(rows, tokenizer).lengths == lengths  # raw rows are formatted first
    figure = report.figure()
    axes = figure.axes[0]
    assert sum(patch.get_height() for patch in axes.patches) == len(rows)  # every example in a bar
    assert axes.lines[0].get_xdata()[0] == 64  # max_seq_length marked


def test_show_example_marks_exactly_the_masked_part(tokenizer, capsys):
    dataset = quiet(QA_ROWS, tokenizer, test_size=1)
    example = dataset["train"][0]
    show_example(dataset, tokenizer, index=0)
    printed = capsys.readouterr().out
    assert f"⟦{example['prompt']}⟧{example['completion']}{tokenizer.eos_token}" in printed
    assert f"{len(example['input_ids'])} tokens" in printed
    conversation = quiet([{"messages": CONVERSATION}], tokenizer)
    marked = marked_example(conversation, tokenizer)
    assert marked.count("⟦") == 2 and "⟧positive<|end|>⟦" in marked and marked.endswith("⟧negative<|end|>")
    with pytest.raises(FtlibError, match="index 5 is outside"):
        marked_example(conversation, tokenizer, index=5)
    with pytest.raises(TypeError):
        show_example(dataset, tokenizer, 0)  # index is named
    with pytest.raises(TypeError):
        length_report(dataset, tokenizer, 64)  # max_seq_length is named


# ---- nothing modified ------------------------------------------------------------------------


def test_nothing_passed_in_is_modified(tokenizer):
    import pandas
    from datasets import Dataset

    rows = copy.deepcopy(ALPACA_ROWS + [{"instruction": "x", "output": "y", "system": "S"}])
    before = copy.deepcopy(rows)
    frame = pandas.DataFrame(QA_ROWS)
    frame_before = frame.copy()
    conversation = [{"messages": copy.deepcopy(CONVERSATION)}]
    template, eos = tokenizer.chat_template, tokenizer.eos_token
    quiet(rows, tokenizer, template="alpaca", system_prompt="Be brief.")
    quiet(frame, tokenizer)
    quiet(conversation, tokenizer, system_prompt="Other.")
    quiet(Dataset.from_list(QA_ROWS), tokenizer, test_size=1)
    assert rows == before
    assert frame.equals(frame_before)
    assert conversation == [{"messages": CONVERSATION}]
    assert (tokenizer.chat_template, tokenizer.eos_token) == (template, eos)


# ---- bad input: each error names the problem, the place and the fix ----------------------------


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


BAD_INPUTS = {
    "unknown columns": (
        [{"headline": "x", "label": "y"}], {},
        r"row 0's columns \(headline, label\).*Shapes tried: qa.*alpaca.*question_column=",
    ),
    "empty dataset": ([], {}, "the dataset is empty"),
    "empty field": (
        [{"question": "q", "answer": "a"}, {"question": "q", "answer": "  "}], {},
        r"row 1: column 'answer' is empty: fill it in or remove the row",
    ),
    "missing field": (
        [{"question": "q", "answer": "a"}, {"question": "q", "answer": None}], {},
        r"row 1: column 'answer' is missing",
    ),
    "non-string field": (
        [{"question": "q", "answer": "a"}, {"question": "q", "answer": 1}], {},
        r"row 1: column 'answer' must be text, got int 1: convert it",
    ),
    "mixed shapes": (
        [{"question": "q", "answer": "a"}, {"instruction": "i", "input": "", "output": "o"}], {},
        r"mixed shapes: row 0 is 'qa'.*row 1 looks like 'alpaca'.*separately",
    ),
    "roles out of order": (
        [{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                       {"role": "assistant", "content": "c"}]}], {},
        r"row 0, 'messages': roles out of order at turn 1: 'user' after 'user'.*merge repeated turns",
    ),
    "conversation ends with the user": (
        [{"messages": [{"role": "user", "content": "a"}]}], {},
        r"row 0, 'messages': the conversation ends with a 'user' turn.*add the assistant's reply",
    ),
    "system turn not first": (
        [{"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"},
                       {"role": "assistant", "content": "c"}]}], {},
        r"roles out of order at turn 1: 'system' after 'user'",
    ),
    "unknown sharegpt role": (
        [{"conversations": [{"from": "human", "value": "a"}, {"from": "robot", "value": "b"}]}], {},
        r"row 0, 'conversations' turn 1: unknown role 'robot': use one of .*gpt.*human",
    ),
    "empty turn": (
        [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]}], {},
        r"row 0, 'messages' turn 1: 'content' must be non-empty text",
    ),
    "named column missing": (
        QA_ROWS, {"question_column": "headline"},
        r"shape 'qa' needs the column\(s\) headline, but row 0 has only \(answer, question\)",
    ),
    "unknown template": (
        QA_ROWS, {"template": "vicuna"}, r"unknown template 'vicuna': known templates are alpaca, chatml, llama-3"
    ),
    "unknown shape": (QA_ROWS, {"shape": "pairs"}, r"unknown shape 'pairs': use one of qa, alpaca"),
    "text and question columns together": (
        QA_ROWS, {"text_column": "question", "answer_column": "answer"}, r"pass one kind, e.g.*text_column='body'",
    ),
    "text column with another shape": (
        QA_ROWS, {"text_column": "question", "shape": "qa"}, r"text_column belongs to shape='text'.*drop one of them",
    ),
    "shape without its columns": (
        QA_ROWS, {"shape": "alpaca"},
        r"shape 'alpaca' needs the column\(s\) instruction, output.*row 0 has only \(answer, question\)",
    ),
    "bad test_size": (QA_ROWS, {"test_size": 1.5}, r"test_size must be a fraction.*try test_size=0.2"),
    "test_size leaves nothing to train": (QA_ROWS, {"test_size": 3}, r"cannot split 3 example\(s\)"),
    "bad too_long": (QA_ROWS, {"too_long": "cut"}, r"too_long must be 'truncate' or 'drop'"),
    "bad max_seq_length": (QA_ROWS, {"max_seq_length": 0}, r"max_seq_length must be a whole number.*try 2048"),
    "missing path": ("no/such/file.jsonl", {}, r"path does not exist: 'no/such/file.jsonl'.*working directory"),
    "not a dict row": ([{"question": "q", "answer": "a"}, "text"], {}, r"row 1 is a str, not a dict"),
    "unreadable type": (42, {}, r"cannot read data of type int"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_names_problem_place_and_fix(tokenizer, case):
    data, options, message = BAD_INPUTS[case]
    with pytest.raises(FtlibError, match=message):
        quiet(data, tokenizer, **options)


def test_malformed_jsonl_line_names_its_line_number(tokenizer, tmp_path):
    path = write(tmp_path, "bad.jsonl", '{"question": "q", "answer": "a"}\n\n{"question": "q", "answer": }\n')
    with pytest.raises(FtlibError, match=r"line 3 of bad.jsonl is not valid JSON.*Fix that line"):
        quiet(path, tokenizer)
    path = write(tmp_path, "list.jsonl", '{"question": "q", "answer": "a"}\n[1, 2]\n')
    with pytest.raises(FtlibError, match=r"line 2 of list.jsonl is a JSON list, not an object"):
        quiet(path, tokenizer)


def test_file_errors_name_the_line(tokenizer, tmp_path):
    bom = write(tmp_path, "bom.jsonl", "\ufeff" + json.dumps(QA_ROWS[0]) + "\n")  # as Windows tools save it
    assert quiet(bom, tokenizer)["completion"] == [QA_ROWS[0]["answer"]]
    path = write(tmp_path, "rows.jsonl", '{"question": "q", "answer": "a"}\n{"question": "q", "answer": ""}\n')
    with pytest.raises(FtlibError, match=r"line 2 of rows.jsonl: column 'answer' is empty"):
        quiet(path, tokenizer)
    mixed = write(tmp_path, "mixed.jsonl", '{"question": "q", "answer": "a"}\n{"prompt": "p", "completion": "c"}\n')
    expected = r"mixed shapes: row 0 is 'qa'.*line 2 of mixed.jsonl looks like 'prompt_completion'"
    with pytest.raises(FtlibError, match=expected):
        quiet(mixed, tokenizer)
    csv_path = write(tmp_path, "rows.csv", "question,answer\nq,a\nq,\n")
    with pytest.raises(FtlibError, match=r"line 3 of rows.csv: column 'answer' is empty"):
        quiet(csv_path, tokenizer)
    with pytest.raises(FtlibError, match=r"the dataset is empty \(empty.jsonl\)"):
        quiet(write(tmp_path, "empty.jsonl", "\n"), tokenizer)
    with pytest.raises(FtlibError, match=r"don't know how to read 'rows.xlsx'"):
        quiet(write(tmp_path, "rows.xlsx", "x"), tokenizer)
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(FtlibError, match=r"has no text files"):
        quiet(tmp_path / "empty_folder", tokenizer)


def test_mixed_shapes_in_a_dataset_with_shared_columns(tokenizer):
    from datasets import Dataset

    rows = [{"question": "q", "answer": "a", "prompt": None, "completion": None},
            {"question": None, "answer": None, "prompt": "p", "completion": "c"}]
    with pytest.raises(FtlibError, match=r"mixed shapes: row 0 is 'qa'.*row 1 looks like 'prompt_completion'"):
        quiet(Dataset.from_list(rows), tokenizer)


def test_tokenizer_without_eos_is_refused(plain_tokenizer):
    plain_tokenizer.eos_token = None
    with pytest.raises(FtlibError, match="no eos_token.*set tokenizer.eos_token"):
        quiet(QA_ROWS, plain_tokenizer)


def test_formatting_formatted_data_is_refused(tokenizer):
    with pytest.raises(FtlibError, match="already formatted.*pass it to train"):
        quiet(quiet(QA_ROWS, tokenizer), tokenizer)


def test_set_chat_template_makes_generation_use_the_training_format(plain_tokenizer):
    from ftlib.data.templates import end_of_turn_marker, set_chat_template

    with pytest.warns(UserWarning):
        expected = quiet(QA_ROWS, plain_tokenizer, template="llama-3")["text"]
    set_chat_template(plain_tokenizer, "llama-3")
    assert end_of_turn_marker(plain_tokenizer, plain_tokenizer.chat_template) == "<|eot_id|>"
    with pytest.warns(UserWarning):
        assert quiet(QA_ROWS, plain_tokenizer)["text"] == expected


def test_template_that_rewrites_earlier_turns_still_trains_every_reply(tokenizer):
    """Like Qwen 3: only the last reply gets (empty) reasoning tags, so history renders differently."""
    rewriting = copy.deepcopy(tokenizer)
    rewriting.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' and loop.last %}"
        "<|im_start|>assistant\n<think></think>{{ m['content'] }}<|im_end|>\n"
        "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.warns(UserWarning, match="<\\|im_end\\|>"):
        example = quiet([{"messages": CONVERSATION}], rewriting)[0]
    eos = tokenizer.eos_token
    assert trained_runs(example, rewriting) == ["positive<|im_end|>", "<think></think>negative<|im_end|>" + eos]


def test_a_template_without_end_marker_keeps_the_answers_own_whitespace(tokenizer):
    bare = copy.deepcopy(tokenizer)
    bare.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    rows = [{"question": "Write a function.", "answer": "def f():\n    return 1\n"}]
    example = quiet(rows, bare)[0]
    assert example["prompt"] == "user: Write a function.\nassistant: "
    assert_prompt_masked(example, bare)  # text == prompt + answer (with its newline) + EOS


def test_a_template_that_trims_replies_still_trains_the_reply_and_marker(tokenizer):
    trimming = copy.deepcopy(tokenizer)
    trimming.chat_template = (
        "{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + (m['content'] | trim) + eos_token + '\n' }}"
        "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    example = quiet([{"question": "Impact?", "answer": "positive  "}], trimming)[0]
    assert trained_runs(example, trimming) == ["positive" + tokenizer.eos_token]
    assert example["text"] == example["prompt"] + "positive" + tokenizer.eos_token


def test_raw_text_chunks_without_offsets_decode_the_tokens(tokenizer, monkeypatch):
    """Slow (Python) tokenizers give no character offsets; each piece's text is then decoded."""
    document = "Investors cheered the strong sales of Torica Retail. " * 6
    expected = quiet([document], tokenizer, max_seq_length=16)
    monkeypatch.setattr(type(tokenizer), "is_fast", property(lambda self: False))
    decoded = quiet([document], tokenizer, max_seq_length=16)
    assert decoded["input_ids"] == expected["input_ids"]
    assert "".join(decoded["text"]) == document + tokenizer.eos_token


def test_conversational_prompt_completion_is_a_conversation(tokenizer):
    rows = [{"prompt": CONVERSATION[:4], "completion": CONVERSATION[4:]}]
    example = quiet(rows, tokenizer)[0]
    assert example == quiet([{"messages": CONVERSATION}], tokenizer)[0]
