"""The precision dtype=None picks, one GPU when a process sees several, and `ftlib doctor`, with the device faked."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from ftlib import add_lora, format_dataset, train
from ftlib.cli import main
from ftlib.environment import auto_precision, check_environment, supported_ranges
from ftlib.models import _pick_dtype
from ftlib.training import devices
from ftlib.training.trainer import FtlibTrainer


def fake_gpu(monkeypatch, name, capability, count=1, old_torch=False):
    """Make torch.cuda answer as a machine with `count` GPUs of this name and compute capability would."""
    native = capability >= (8, 0)

    def is_bf16_supported(including_emulation=True):
        return native or including_emulation  # a T4 emulates bfloat16: True unless emulation is excluded

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", (lambda: True) if old_torch else is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: SimpleNamespace(name=name, major=capability[0], minor=capability[1]))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (15.0e9, 15.6e9))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


# dtype=None --------------------------------------------------------------------------------------------
def test_a_t4_gets_float16_although_torch_says_it_emulates_bfloat16(monkeypatch):
    fake_gpu(monkeypatch, "Tesla T4", (7, 5))
    assert torch.cuda.is_bf16_supported()  # the emulation answer that used to pick bfloat16
    assert _pick_dtype(None, "cuda") == torch.float16
    assert auto_precision() == (torch.float16, "no native bfloat16 below compute capability 8.0")
    report = check_environment()
    assert report.precision == "float16" and not report.bf16
    assert report.summary().splitlines()[0] == (
        "GPU Tesla T4 (compute capability 7.5, 16 GB): float16 — no native bfloat16 below compute capability 8.0")


def test_a_gpu_with_native_bfloat16_gets_bfloat16(monkeypatch):
    fake_gpu(monkeypatch, "NVIDIA H200", (9, 0))
    assert _pick_dtype(None, "cuda") == torch.bfloat16
    report = check_environment()
    assert report.precision == "bfloat16"
    assert "bfloat16 — native bfloat16 from compute capability 8.0" in report.summary()


def test_torch_without_the_emulation_argument_falls_back_to_the_compute_capability(monkeypatch):
    fake_gpu(monkeypatch, "Tesla T4", (7, 5), old_torch=True)
    assert _pick_dtype(None, "cuda") == torch.float16
    fake_gpu(monkeypatch, "NVIDIA A100", (8, 0), old_torch=True)
    assert _pick_dtype(None, "cuda") == torch.bfloat16


def test_the_cpu_gets_float32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _pick_dtype(None, "cpu") == torch.float32
    assert auto_precision() == (torch.float32, "no GPU")
    assert check_environment().summary().startswith("CPU only (no GPU): float32")


# Several GPUs in one process -----------------------------------------------------------------------------
def test_several_gpus_train_on_one_without_dataparallel_and_say_so_once(tiny_model, headline_rows, monkeypatch,
                                                                       capsys):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # as transformers counts GPUs for n_gpu
    monkeypatch.setattr(devices, "_noted", set())
    seen = []  # (the model each training step gets, the trainer's n_gpu)
    original_step = FtlibTrainer.training_step

    def recording_step(self, model, inputs, num_items_in_batch=None):
        seen.append((model, self.args.n_gpu, self.args.train_batch_size))
        return original_step(self, model, inputs, num_items_in_batch)

    monkeypatch.setattr(FtlibTrainer, "training_step", recording_step)
    model, tokenizer = tiny_model
    model = add_lora(model, use_gradient_checkpointing=False)
    dataset = format_dataset(headline_rows[:16], tokenizer)
    for _ in range(2):  # a notebook that trains twice
        train(model, tokenizer, dataset, max_steps=2, per_device_train_batch_size=2, gradient_accumulation_steps=1,
              learning_rate=1e-3, output_dir="/tmp/ftlib-test-two-gpus", verbose=False)
    assert len(seen) == 4
    assert not any(isinstance(step_model, torch.nn.DataParallel) for step_model, _, _ in seen)
    assert {(n_gpu, batch) for _, n_gpu, batch in seen} == {(1, 2)}  # the batch the user chose, not 2 x 2
    printed = capsys.readouterr().out
    note = ("2 GPUs visible; training on cuda:0. To use both, run your script with one process per GPU: "
            "torchrun --nproc_per_node 2 your_script.py (or accelerate launch your_script.py)")
    assert printed.count(note) == 1, printed
    assert "DataParallel" not in printed


def test_one_gpu_or_a_launcher_leaves_the_arguments_alone(monkeypatch, capsys):
    from transformers import TrainingArguments

    monkeypatch.setattr(devices, "_noted", set())
    config = TrainingArguments(output_dir="/tmp/ftlib-test-one-gpu", report_to="none")
    assert devices.train_on_one_gpu(config).n_gpu == torch.cuda.device_count()  # 0 on a CPU, 1 on one GPU
    assert capsys.readouterr().out == ""


def test_the_report_notes_several_gpus(monkeypatch):
    fake_gpu(monkeypatch, "Tesla T4", (7, 5), count=2)
    summary = check_environment().summary()
    assert "2 GPUs visible; training on cuda:0. To use both" in summary


# ftlib doctor --------------------------------------------------------------------------------------------
def test_the_ranges_come_from_ftlibs_metadata_and_match_pyproject():
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["notebooks"]
    names = {text.split(";")[0].split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip() for text in declared}
    ranges = supported_ranges()
    assert set(ranges) == names
    assert ranges["transformers"] == (">=5.15,<6", "ftlib needs it to train")
    assert ranges["ipywidgets"] == (">=7.7.1", "the notebooks use it")


def test_doctor_exits_0_when_all_is_well(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Python ") and f"torch {torch.__version__}" in out
    assert "transformers" in out and ">=5.15,<6" in out and "ipywidgets" in out
    assert out.rstrip().endswith("Ready to train.")


def test_doctor_names_the_pip_line_for_a_version_out_of_range(monkeypatch, capsys):
    from ftlib import environment

    real_version = environment._version
    monkeypatch.setattr(environment, "_version",
                        lambda name: {"transformers": "4.57.0", "matplotlib": None}.get(name, real_version(name)))
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert ('Problem: transformers 4.57.0 is outside the supported range >=5.15,<6: '
            'run  pip install "transformers>=5.15,<6"') in out
    assert 'Problem: matplotlib is not installed (the notebooks use it): run  pip install "matplotlib>=3.7"' in out
    assert out.rstrip().endswith("Fix the problems above, then restart the runtime.")


@pytest.fixture
def headline_rows():
    from ftlib.demo import load_headlines

    return load_headlines("train")


def test_an_explicit_bfloat16_on_a_gpu_that_emulates_it_is_kept_with_a_note(monkeypatch, capsys):
    import torch

    from ftlib.models import _pick_dtype

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert _pick_dtype("bfloat16", "cuda") == torch.bfloat16
    assert "emulates bfloat16" in capsys.readouterr().out
