"""Nothing lost, nothing silent: the user's files survive every save and training run, a save killed at any
moment leaves the earlier save or the new one, and a NaN or infinity never passes unnoticed."""

import copy
import json
import os
import random
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import TrainerCallback

from ftlib import TrainingHistory, add_lora, chat, diagnose, evaluate, format_dataset, generate, load_model, save, train
from ftlib.checks import non_finite_weights
from ftlib.demo import load_headlines, tiny_model_path
from ftlib.errors import FtlibError, FtlibFileNotFoundError, FtlibPermissionError
from ftlib.export.saving import MANIFEST


@pytest.fixture(scope="module")
def tiny():
    base, tokenizer = load_model("ftlib-tiny", load_in_4bit=False, max_seq_length=128)
    rows = load_headlines("train")[:16]
    return base, tokenizer, rows, format_dataset(rows[:8], tokenizer, verbose=False)


def _lora(tiny, r=4):
    return add_lora(copy.deepcopy(tiny[0]), r=r, use_gradient_checkpointing=False)


def _weights(model):
    return {name: parameter.detach().clone() for name, parameter in model.named_parameters()}


def _same(first, second):
    return first.keys() == second.keys() and all(torch.equal(first[name], second[name]) for name in first)


def _poison(model):
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "lora_B" in n)[0, 0] = float("nan")
    return model


def _files(folder):
    return {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def _read_only_path(tmp_path):
    """A path this process may not create: under a chmod 555 folder, or (root ignores modes) under /sys."""
    if os.geteuid() == 0:
        return "/sys/ftlib-nothing-lost-test/out"
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return str(folder / "out")


# --------------------------------------------------------------------- save keeps your files


def test_overwrite_replaces_only_what_the_earlier_save_wrote(tiny, tmp_path, capsys):
    model, tokenizer = _lora(tiny), tiny[1]
    folder = tmp_path / "a"
    first = save(model, tokenizer, folder, verbose=False)
    listed = json.loads((folder / MANIFEST).read_text())["files"]
    assert set(listed) | {MANIFEST} == {name for name, _ in first.files} == set(_files(folder))
    (folder / "mine.txt").write_text("my notes")
    (folder / "runs").mkdir()
    (folder / "runs" / "log.csv").write_text("step,loss\n")

    result = save(model, tokenizer, folder, method="merged_16bit", overwrite=True)
    printed = capsys.readouterr().out
    assert (folder / "mine.txt").read_text() == "my notes"
    assert (folder / "runs" / "log.csv").read_text() == "step,loss\n"
    assert not (folder / "adapter_config.json").exists() and (folder / "config.json").is_file()
    assert "mine.txt" not in {name for name, _ in result.files}  # the report lists only what ftlib wrote
    assert "Kept 2 file(s) of yours" in printed and "mine.txt" in printed and str(folder) in printed
    assert "mine.txt" not in json.loads((folder / MANIFEST).read_text())["files"]
    assert load_model(str(folder), load_in_4bit=False)[0] is not None


def test_a_file_the_user_edited_or_added_under_a_saved_name_is_never_replaced(tiny, tmp_path):
    model, tokenizer = _lora(tiny), tiny[1]
    folder = tmp_path / "a"
    save(model, tokenizer, folder, verbose=False)
    (folder / "README.md").write_text("my own description")  # ftlib wrote it; the user rewrote it
    before = _files(folder)
    with pytest.raises(FtlibError, match="README.md, written by ftlib's earlier save and changed since"):
        save(model, tokenizer, folder, overwrite=True, verbose=False)
    assert _files(folder) == before
    with pytest.raises(FtlibError, match="README.md.*changed since"):  # not even by a method without a README
        save(model, tokenizer, folder, method="merged_16bit", overwrite=True, verbose=False)
    assert _files(folder) == before
    (folder / "README.md").unlink()
    (folder / "Modelfile").write_text("FROM my-own")  # a name only the ollama method writes
    with pytest.raises(FtlibError, match="Modelfile, which ftlib did not write.*move or rename yours"):
        save(model, tokenizer, folder, method="ollama", overwrite=True, verbose=False)
    assert (folder / "Modelfile").read_text() == "FROM my-own"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a"]  # no temporary folder left behind


def test_a_model_folder_ftlib_did_not_write_is_not_replaced(tiny, tmp_path):
    folder = tmp_path / "theirs"
    tiny[0].save_pretrained(folder)
    before = _files(folder)
    with pytest.raises(FtlibError, match=f"no record of writing.*{MANIFEST}"):
        save(_lora(tiny), tiny[1], folder, method="merged_16bit", overwrite=True, verbose=False)
    assert _files(folder) == before


def test_a_save_without_a_manifest_is_replaced_by_name_and_other_files_kept(tiny, tmp_path):
    folder = tmp_path / "older"
    save(_lora(tiny), tiny[1], folder, verbose=False)
    (folder / MANIFEST).unlink()  # a save that predates the manifest: its model card still names ftlib
    (folder / "mine.txt").write_text("my notes")
    result = save(_lora(tiny), tiny[1], folder, method="merged_16bit", overwrite=True, verbose=False)
    assert (folder / "mine.txt").read_text() == "my notes" and not (folder / "adapter_config.json").exists()
    assert "Kept 1 file(s) of yours" in "\n".join(result.notes) and (folder / MANIFEST).is_file()


def test_push_uploads_only_the_files_of_the_save(tiny, tmp_path, monkeypatch):
    uploaded = {}

    class Hub:
        def create_repo(self, **settings):
            pass

        def upload_folder(self, folder_path, allow_patterns=None, **settings):
            uploaded["patterns"] = allow_patterns

    monkeypatch.setattr("huggingface_hub.HfApi", lambda: Hub())
    folder = tmp_path / "a"
    save(_lora(tiny), tiny[1], folder, verbose=False)
    (folder / "private-notes.txt").write_text("not for the Hub")
    save(_lora(tiny), tiny[1], folder, overwrite=True, repo_id="me/a", token="hf_test", verbose=False)
    assert "adapter_model.safetensors" in uploaded["patterns"] and "private-notes.txt" not in uploaded["patterns"]


# ----------------------------------------------------------------- training keeps your files


def test_checkpoints_and_early_stopping_leave_the_users_readme_alone(tiny, tmp_path):
    base, tokenizer, rows, data = tiny
    project = tmp_path / "proj"
    project.mkdir()
    (project / "README.md").write_text("my project")
    train(_lora(tiny), tokenizer, data, output_dir=str(project), save_steps=1, max_steps=2, verbose=False)
    assert (project / "README.md").read_text() == "my project"
    assert sorted(path.name for path in project.iterdir()) == ["README.md", "checkpoint-1", "checkpoint-2"]

    splits = format_dataset(rows, tokenizer, test_size=4, verbose=False)
    train(_lora(tiny), tokenizer, splits, output_dir=str(project), early_stopping_patience=1, eval_steps=1,
          max_steps=3, verbose=False)
    assert (project / "README.md").read_text() == "my project"


def test_training_without_checkpoints_writes_nothing_where_it_was_not_asked(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train(_lora(tiny), tiny[1], tiny[3], max_steps=1, verbose=False)  # output_dir defaults to "outputs"
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_output_dir_fails_before_any_weight_changes(tiny, tmp_path):
    model = _lora(tiny)
    before = _weights(model)
    with pytest.raises(FtlibPermissionError, match="cannot write checkpoints") as caught:
        train(model, tiny[1], tiny[3], max_steps=2, save_steps=1, output_dir=_read_only_path(tmp_path), verbose=False)
    assert isinstance(caught.value, PermissionError) and isinstance(caught.value.__cause__, PermissionError)
    assert _same(before, _weights(model))


# ----------------------------------------------------- NaN weights, a model without adapters


def test_a_nan_weight_is_refused_by_train_generate_evaluate_and_save(tiny, tmp_path):
    model = _poison(_lora(tiny))
    tokenizer = tiny[1]
    before = _weights(model)
    with pytest.raises(FtlibError, match="NaN or infinite values before training.*lora_B.*load the model again"):
        train(model, tokenizer, tiny[3], max_steps=2, save_steps=1, output_dir=str(tmp_path / "out"), verbose=False)
    assert before.keys() == _weights(model).keys() and not (tmp_path / "out").exists()
    for call in (lambda: generate(model, tokenizer, "Hi"), lambda: chat(model, tokenizer, "Hi"),
                 lambda: evaluate(model, tokenizer, tiny[2][:2])):
        with pytest.raises(FtlibError, match="NaN or infinite.*load the model again"):
            call()
    with pytest.raises(FtlibError, match="NaN or infinite.*nothing was written"):
        save(model, tokenizer, tmp_path / "adapter", verbose=False)
    assert not (tmp_path / "adapter").exists() and sorted(path.name for path in tmp_path.iterdir()) == []
    with pytest.raises(FtlibError, match="lora_alpha.*not a finite number"):
        add_lora(copy.deepcopy(tiny[0]), lora_alpha=float("nan"))


@pytest.mark.parametrize("history", [
    TrainingHistory(steps=[1, 2, 3], loss=[float("nan")] * 3),
    TrainingHistory(loss=[float("nan"), float("nan")]),  # losses without their steps
    TrainingHistory(steps=[1, 2, 3], loss=[2.0, 1.5, float("inf")]),
    TrainingHistory(steps=[1, 2], loss=[2.0, 1.0], eval_steps=[2], eval_loss=[float("nan")]),
    {"steps": [1, 2], "loss": [1.2, float("nan")]},
], ids=["all-nan", "nan-without-steps", "inf-at-the-end", "nan-held-out", "a-dict"])
def test_diagnose_names_a_non_finite_loss_instead_of_calling_it_healthy(history):
    diagnosis = diagnose(history)
    assert diagnosis.verdict == "diverged" and not diagnosis.healthy
    assert "NaN or infinite" in str(diagnosis)


def test_a_nan_from_the_start_is_blamed_on_the_weights_or_data_not_the_learning_rate():
    text = str(diagnose(TrainingHistory(steps=[1, 2], loss=[float("nan")] * 2, learning_rate=[2e-4, 2e-4])))
    assert "from the first logged step" in text and "non_finite_weights" in text and "show_example" in text


def test_training_a_model_without_adapters_is_refused_and_changes_nothing(tiny):
    base = copy.deepcopy(tiny[0])
    before = _weights(base)
    with pytest.raises(FtlibError, match="no LoRA adapters.*add_lora\\(model\\).*full_finetuning=True"):
        train(base, tiny[1], tiny[3], max_steps=1, verbose=False)
    assert _same(before, _weights(base))
    frozen = _lora(tiny)
    for parameter in frozen.parameters():
        parameter.requires_grad_(False)
    with pytest.raises(FtlibError, match="no trainable weights"):
        train(frozen, tiny[1], tiny[3], max_steps=1, verbose=False)
    full, tokenizer = load_model("ftlib-tiny", full_finetuning=True, max_seq_length=128)
    assert train(full, tokenizer, tiny[3], max_steps=1, verbose=False).steps == [1]  # asked for: allowed


# -------------------------------------------------------------- the NaN guard keeps its word


class _AtStepEnd(TrainerCallback):
    def __init__(self, step, action):
        self.step, self.action = step, action

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            self.action(model)


def test_a_nan_injected_mid_training_stops_it_and_puts_the_weights_from_before_back(tiny, capsys):
    model = _lora(tiny)
    kept = {}

    def inject(trained):  # after step 3's update was checked: a NaN appears between two steps
        kept.update(_weights(trained))
        _poison(trained)

    history = train(model, tiny[1], tiny[3], max_steps=10, learning_rate=1e-3, per_device_train_batch_size=4,
                    gradient_accumulation_steps=1, callbacks=[_AtStepEnd(3, inject)], verbose=False)
    assert history.stopped_reason == "nan_loss" and history.steps[-1] == 4  # the step that met the NaN
    assert not non_finite_weights(model) and _same(kept, _weights(model))  # step 3's weights, not the NaN
    printed = capsys.readouterr().out
    assert "Training stopped at step 4" in printed and "the weights of step 3" in printed
    assert diagnose(history).verdict == "diverged"


def test_the_guard_puts_back_the_weights_an_update_made_non_finite():
    from types import SimpleNamespace

    from transformers import TrainerControl, TrainerState

    from ftlib.training.safety import NonFiniteLossGuard

    model = torch.nn.Linear(2, 2)
    start = _weights(model)
    guard, state, control = NonFiniteLossGuard(), TrainerState(), TrainerControl()
    guard.on_train_begin(SimpleNamespace(learning_rate=2e-4, fp16=False), state, control, model=model)
    with torch.no_grad():  # an update that overflowed: finite gradients, infinite weights
        model.weight.fill_(float("inf"))
    guard.on_optimizer_step(SimpleNamespace(), state, control)
    assert guard.triggered and control.should_training_stop and guard.step == 1 and guard.good_step == 0
    assert _same(start, _weights(model))
    assert "the weights became NaN or infinite" in guard.message and "the weights it started with" in guard.message

    with torch.no_grad():  # a good update is kept as the new last good weights
        model.weight.add_(1.0)
    guard, state = NonFiniteLossGuard(copy_limit_bytes=0), TrainerState()  # too large to copy: nothing to put back
    guard.on_train_begin(SimpleNamespace(learning_rate=2e-4, fp16=False), state, control, model=model)
    with torch.no_grad():
        model.weight.fill_(float("nan"))
    guard.on_optimizer_step(SimpleNamespace(), state, control)
    assert guard.triggered and not guard.restored and "could not be put back" in guard.message


# ------------------------------------------------------------------------ loud, early errors


def test_errors_from_dependencies_come_back_named_with_the_original_chained(tiny, tmp_path):
    import shutil

    from safetensors import SafetensorError

    def copy_with(name, change):
        folder = tmp_path / name
        shutil.copytree(tiny_model_path(), folder)
        change(folder)
        return str(folder)

    damaged = copy_with("damaged", lambda f: (f / "model.safetensors").write_bytes(b"\xff" * 64))
    with pytest.raises(FtlibError, match=f"model.safetensors in {damaged} is damaged") as caught:
        load_model(damaged, load_in_4bit=False)
    assert isinstance(caught.value.__cause__, SafetensorError)
    not_json = copy_with("not-json", lambda f: (f / "config.json").write_text("{not json"))
    with pytest.raises(FtlibError, match="config.json .* is not valid JSON") as caught:
        load_model(not_json, load_in_4bit=False)
    assert caught.value.__cause__ is not None
    no_weights = copy_with("no-weights", lambda f: (f / "model.safetensors").unlink())
    with pytest.raises(FtlibFileNotFoundError, match="no weights file") as caught:
        load_model(no_weights, load_in_4bit=False)
    assert isinstance(caught.value, FileNotFoundError) and isinstance(caught.value.__cause__, OSError)
    with pytest.raises(FtlibError, match="got 'flaot16'"):  # the value given, not what it turned into
        load_model("ftlib-tiny", dtype="flaot16")
    with pytest.raises(FtlibError, match="asks for GPU 7"):
        load_model("ftlib-tiny", load_in_4bit=False, device_map="cuda:7")
    with pytest.raises(FtlibError, match="drop load_in_8bit=True"):
        load_model("ftlib-tiny", full_finetuning=True, load_in_8bit=True)


def test_arguments_that_were_silently_bent_are_refused(tiny):
    model, tokenizer, data = _lora(tiny), tiny[1], tiny[3]
    for settings, words in (({"max_seq_length": -5}, "max_seq_length"), ({"max_seq_length": 0}, "max_seq_length"),
                            ({"eval_steps": 2}, "held-out data"), ({"logging_steps": 0}, "logging_steps"),
                            ({"lr_scheduler_type": "cosinus"}, "lr_scheduler_type")):
        with pytest.raises(FtlibError, match=words):
            train(model, tokenizer, data, max_steps=1, verbose=False, **settings)
    for call in (lambda: generate(model, tokenizer, ""), lambda: chat(model, tokenizer, "")):
        with pytest.raises(FtlibError, match="empty"):  # generate and chat agree
            call()
    with pytest.raises(FtlibError, match="temperature.*not a finite number"):
        generate(model, tokenizer, "Hi", temperature=float("nan"))


# --------------------------------------------------------------- a save killed at any moment

_SAVER = textwrap.dedent('''
    import os, random, signal, sys, time
    import torch
    torch.set_num_threads(1)
    from ftlib import add_lora, load_model, save

    folder, kills, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    base, tokenizer = load_model("ftlib-tiny", load_in_4bit=False)
    model = add_lora(base, r=4, use_gradient_checkpointing=False)
    save(model, tokenizer, folder, verbose=False)
    with open(os.path.join(folder, "mine.txt"), "w") as handle:
        handle.write("the user's own file")
    delays = random.Random(seed)
    for kill in range(kills):
        child = os.fork()
        if child == 0:  # saves for ever, alternating two methods whose files differ, until killed
            for turn in range(10**6):
                with torch.no_grad():
                    for name, parameter in model.named_parameters():
                        if "lora_B" in name:
                            parameter.add_(0.01)
                save(model, tokenizer, folder, method=("lora", "merged_16bit")[turn % 2], overwrite=True, verbose=False)
            os._exit(0)
        time.sleep(delays.uniform(0.05, 0.6))
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        print("killed", kill, flush=True)
        sys.stdin.readline()  # the test checks the folder, then lets the next round start
    save(model, tokenizer, folder, overwrite=True, verbose=False)
    print("saved", flush=True)
''')


def _check_one_whole_save(folder):
    """The folder holds exactly one complete save (every file its manifest lists, as listed) and the user's file."""
    from ftlib.export.saving import _fingerprint

    manifest = json.loads((folder / MANIFEST).read_text())
    files = {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()}
    assert files == set(manifest["files"]) | {MANIFEST, "mine.txt"}, (files, manifest["method"])
    for name, recorded in manifest["files"].items():
        assert _fingerprint(folder / name) == recorded, name
    assert (folder / "mine.txt").read_text() == "the user's own file"
    return manifest["method"]


def test_a_save_killed_at_any_moment_leaves_the_old_save_or_the_new_one(tmp_path):
    folder, kills, seed = tmp_path / "adapter", 6, random.randrange(10**6)
    process = subprocess.Popen([sys.executable, "-c", _SAVER, str(folder), str(kills), str(seed)], text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=tmp_path)
    methods, left_behind = [], 0
    try:
        for _ in range(kills):
            line = process.stdout.readline()
            while line and not line.startswith("killed"):  # what loading and add_lora print first
                line = process.stdout.readline()
            assert line.startswith("killed"), f"the saver stopped early (seed={seed})"
            methods.append(_check_one_whole_save(folder))
            leftovers = [path.name for path in tmp_path.iterdir() if path.name.startswith(".adapter.saving-")]
            left_behind += len(leftovers)
            process.stdin.write("next\n")
            process.stdin.flush()
        last_lines = [process.stdout.readline()]
        while last_lines[-1] and not last_lines[-1].startswith("saved"):
            last_lines.append(process.stdout.readline())
        assert last_lines[-1].startswith("saved") and process.wait(timeout=60) == 0
        for name in leftovers:  # what the last kill left is named as the next save removes it
            assert any(line.startswith("note: removed") and name in line for line in last_lines), (name, last_lines)
    finally:
        if process.poll() is None:
            process.kill()
    assert left_behind >= 1, f"no kill landed inside a save (seed={seed})"  # the kills did interrupt saves
    assert _check_one_whole_save(folder) == "lora"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["adapter"]  # the last save removed the leftovers
    assert load_model(str(folder), load_in_4bit=False)[0] is not None


def test_leftovers_of_an_interrupted_save_are_removed_or_restored(tiny, tmp_path, capsys):
    model, tokenizer = _lora(tiny), tiny[1]
    folder = tmp_path / "adapter"
    save(model, tokenizer, folder, verbose=False)
    dead = 2**22 + 12345  # above the largest process id Linux hands out by default
    unfinished = tmp_path / f".adapter.saving-{dead}-0123abcd"
    unfinished.mkdir()
    (unfinished / "adapter_model.safetensors").write_bytes(b"half")
    # Killed between moving the old save aside and moving the new one in: only the old save survives.
    os.replace(folder, tmp_path / f".adapter.previous-{dead}-89abcdef")
    before = _files(tmp_path / f".adapter.previous-{dead}-89abcdef")
    with pytest.raises(FtlibError, match="not empty"):  # the earlier save is back, so this is refused as usual
        save(model, tokenizer, folder, verbose=False)
    printed = capsys.readouterr().out
    assert "restored" in printed and "removed" in printed and unfinished.name in printed
    assert _files(folder) == before and sorted(path.name for path in tmp_path.iterdir()) == ["adapter"]
