"""`ftlib quickstart` end to end: the console command's summary line meets the issue's target."""

import re

import pytest

from ftlib.cli import main

SUMMARY = re.compile(
    r"^quickstart: accuracy_before=(\d\.\d\d) accuracy_after=(\d\.\d\d) final_loss=(\d+\.\d\d) seconds=(\d+)$"
)


@pytest.mark.slow
def test_quickstart_learns_the_task_and_reloads_the_same_answers(tmp_path, capsys):
    assert main(["quickstart", "--output-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    match = SUMMARY.match(lines[-1])
    assert match, lines[-1]
    before, after, final_loss = (float(match.group(index)) for index in (1, 2, 3))
    assert before <= 0.30
    assert after >= 0.90
    assert 0 <= final_loss < 0.5
    assert (tmp_path / "loss.png").stat().st_size > 5_000
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert any("the same answers on every held-out headline" in line for line in lines)


def test_cli_reports_bad_input_without_a_traceback(tmp_path, capsys):
    code = main(["train", "--data", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "out"), "--no-4bit"])
    assert code == 2
    error = capsys.readouterr().err
    assert error.startswith("ftlib: ") and "missing.jsonl" in error


def test_cli_train_saves_an_adapter_that_chat_can_talk_to(tmp_path, capsys, monkeypatch):
    from ftlib.demo import load_headlines
    import json

    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in load_headlines("train")[:20]))
    output = tmp_path / "adapter"
    assert main(["train", "--data", str(data), "--output", str(output), "--no-4bit", "--max-steps", "2",
                 "--max-seq-length", "128"]) == 0
    assert (output / "adapter_model.safetensors").is_file()
    assert re.search(r"^train: final_loss=\d+\.\d+, held-out loss \d+\.\d+ seconds=\d+$",
                     capsys.readouterr().out, flags=re.M)

    answers = iter(["Headline: Acme shares rose\nDoes this headline impact Acme positively or negatively?", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(answers))
    assert main(["chat", str(output), "--max-new-tokens", "4", "--temperature", "0"]) == 0
    assert "model> " in capsys.readouterr().out
