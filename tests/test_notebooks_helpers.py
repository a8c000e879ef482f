"""ftlib.notebook (panel, live loss plot, model choice) and ftlib.environment, tested without the notebooks."""

import json
from types import SimpleNamespace

import nbformat
import pytest

from ftlib.environment import EnvironmentReport, check_environment
from ftlib.errors import FtlibError
from ftlib.notebook import CPU_MODEL, GPU_MODEL, TINY_MODEL, HyperparameterPanel, LiveLossPlot, choose_model
from ftlib.notebook import model_choice
from ftlib.notebook.live_plot import _Progress, format_duration

# ipywidgets classes that exist with the same constructor arguments in 7.7.1 (Colab) and 8
PORTABLE_WIDGETS = {"FloatLogSlider", "FloatSlider", "IntSlider", "Dropdown", "VBox", "HBox"}


# The panel -----------------------------------------------------------------------------------------
def test_untouched_panel_gives_the_guides_defaults():
    panel = HyperparameterPanel()
    assert panel.train_kwargs() == {"learning_rate": 2e-4, "per_device_train_batch_size": 2,
                                    "gradient_accumulation_steps": 4, "max_steps": 60, "num_train_epochs": None}
    assert panel.lora_kwargs() == {"r": 16, "lora_alpha": 16, "lora_dropout": 0.0}
    assert panel.load_kwargs() == {"max_seq_length": 2048}
    _ = panel.widget  # building the widgets must not change what an unattended run reads
    assert panel.train_kwargs()["learning_rate"] == 2e-4 and panel.lora_kwargs()["r"] == 16


def test_moving_a_control_changes_what_the_next_cell_reads():
    panel = HyperparameterPanel(learning_rate=1e-3, max_steps=250)
    panel.widget  # shown: the controls exist now
    controls = panel._widgets
    assert panel.train_kwargs()["max_steps"] == 250
    controls["learning_rate"].value = 3e-5
    controls["r"].value = 4
    controls["length_by"].value = "epochs"
    controls["num_train_epochs"].value = 3
    assert panel.train_kwargs()["learning_rate"] == pytest.approx(3e-5, rel=0.01)
    assert panel.train_kwargs()["num_train_epochs"] == 3 and panel.train_kwargs()["max_steps"] is None
    assert panel.lora_kwargs()["r"] == 4
    assert "effective batch" in panel.describe() and "= 8" in panel.describe()


def test_panel_uses_only_widgets_shared_by_ipywidgets_7_and_8():
    seen = set()

    def walk(widget):
        seen.add(type(widget).__name__)
        for child in getattr(widget, "children", ()):
            walk(child)

    walk(HyperparameterPanel().widget)
    assert seen <= PORTABLE_WIDGETS, seen - PORTABLE_WIDGETS


def test_panel_rejects_an_unknown_setting_and_names_the_valid_ones():
    with pytest.raises(FtlibError, match="learning_rate"):
        HyperparameterPanel(learning_rte=1e-3)


def test_panel_values_train_a_model(tiny_model, tmp_path):
    """The panel's kwargs are accepted by the real add_lora and train (two steps)."""
    from ftlib import add_lora, train
    from ftlib.demo import load_headlines

    model, tokenizer = tiny_model
    panel = HyperparameterPanel(max_steps=2, r=4, lora_alpha=8, per_device_train_batch_size=2,
                                gradient_accumulation_steps=1)
    model = add_lora(model, use_gradient_checkpointing=False, **panel.lora_kwargs())
    history = train(model, tokenizer, load_headlines("train")[:8], output_dir=str(tmp_path),
                    **panel.train_kwargs())
    assert history.steps[-1] == 2 and model.peft_config["default"].r == 4


# The live plot ---------------------------------------------------------------------------------------
def _events(plot, steps=10, evaluate_every=5):
    args, control = SimpleNamespace(), SimpleNamespace()
    state = SimpleNamespace(max_steps=steps, global_step=0)
    plot.on_train_begin(args, state, control)
    for step in range(1, steps + 1):
        state.global_step = step
        plot.on_step_end(args, state, control)
        plot.on_log(args, state, control, logs={"loss": 3.0 / step, "learning_rate": 1e-3})
        if step % evaluate_every == 0:
            plot.on_log(args, state, control, logs={"eval_loss": 2.0 + step / 100})
    plot.on_train_end(args, state, control)


def test_live_plot_records_training_and_held_out_loss_and_draws_both():
    plot = LiveLossPlot(redraw_seconds=0)
    _events(plot)
    assert plot.steps == list(range(1, 11)) and plot.eval_steps == [5, 10]
    figure = plot.draw()
    labels = [line.get_label() for line in figure.axes[0].get_lines()]
    assert labels == ["training loss", "held-out loss"]
    assert plot.png().startswith(b"\x89PNG")


def test_live_plot_without_ipython_prints_a_final_progress_line(capsys):
    _events(LiveLossPlot())
    printed = capsys.readouterr().out
    assert "step 10/10" in printed and "done" in printed and "held-out loss 2.100" in printed


def test_progress_line_estimates_time_left():
    progress = _Progress(step=15, max_steps=60, seconds=30, loss=[1.5], eval_loss=[])
    assert progress.seconds_left() == pytest.approx(90)
    assert "step 15/60" in repr(progress) and "about 1:30 left" in repr(progress)
    assert "<progress" in progress._repr_html_()
    assert format_duration(3723) == "1:02:03" and format_duration(7) == "0:07"


@pytest.mark.slow
def test_live_plot_in_a_headless_kernel_leaves_one_final_figure_and_progress():
    """Display-handle updates replace the outputs in place: the saved cell holds the last figure only."""
    from nbclient import NotebookClient

    source = (
        "from types import SimpleNamespace\n"
        "from ftlib.notebook import LiveLossPlot\n"
        "plot = LiveLossPlot(redraw_seconds=0)\n"
        "a, c, s = SimpleNamespace(), SimpleNamespace(), SimpleNamespace(max_steps=6, global_step=0)\n"
        "plot.on_train_begin(a, s, c)\n"
        "for step in range(1, 7):\n"
        "    s.global_step = step\n"
        "    plot.on_log(a, s, c, logs={'loss': 1.0 / step})\n"
        "plot.on_log(a, s, c, logs={'eval_loss': 0.7})\n"
        "plot.on_train_end(a, s, c)\n"
    )
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    outputs = [output for output in notebook.cells[0].outputs if output.output_type != "stream"]  # import warnings
    assert [output.output_type for output in outputs] == ["display_data", "display_data"]
    assert "image/png" in outputs[0].data
    assert "step 6/6" in outputs[1].data["text/plain"] and "held-out loss 0.700" in outputs[1].data["text/plain"]


# Model choice ----------------------------------------------------------------------------------------
@pytest.fixture
def no_override(monkeypatch):
    monkeypatch.delenv("FTLIB_MODEL", raising=False)
    monkeypatch.delenv("FTLIB_LOAD_IN_4BIT", raising=False)
    return monkeypatch


def test_without_a_gpu_a_notebook_that_trains_once_gets_the_real_offline_model_and_the_guides_defaults(no_override):
    no_override.setattr(model_choice, "_has_gpu", lambda: False)
    no_override.setattr(model_choice, "hub_reachable", lambda timeout=2.0: False)
    choice = choose_model()
    assert choice.name == CPU_MODEL == "smollm2-135m-instruct" and not choice.tiny and choice.runs == "once"
    assert not choice.load_in_4bit and choice.use_gradient_checkpointing is False  # a CPU has memory to spare
    assert choice.recipe == {"learning_rate": 2e-4, "max_steps": 60}  # the guide's defaults, no more
    assert "FTLIB_MODEL" in repr(choice) and "the guide's defaults" in repr(choice)


def test_without_a_gpu_a_notebook_of_many_runs_gets_the_tiny_model_and_says_why_it_needs_more(no_override):
    no_override.setattr(model_choice, "_has_gpu", lambda: False)
    choice = choose_model(runs="many")
    assert choice.name == TINY_MODEL and not choice.load_in_4bit and choice.tiny
    assert choice.recipe["learning_rate"] > 2e-4 and choice.recipe["max_steps"] > 60
    assert "many times" in choice.reason and "10x the guide's learning rate" in repr(choice)


def test_a_cpu_with_the_hub_but_without_the_package_loads_the_same_model_from_the_hub(no_override):
    no_override.setattr(model_choice, "_has_gpu", lambda: False)
    no_override.setattr(model_choice, "hub_reachable", lambda timeout=2.0: True)
    no_override.setattr(model_choice, "_has_offline_model", lambda: False)
    assert choose_model().name == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_gpu_without_internet_uses_the_real_offline_model_or_the_tiny_one_for_many_runs(no_override):
    no_override.setattr(model_choice, "_has_gpu", lambda: True)
    no_override.setattr(model_choice, "hub_reachable", lambda timeout=2.0: False)
    once = choose_model()
    assert once.name == CPU_MODEL and once.load_in_4bit and once.use_gradient_checkpointing == "offload"
    assert "no connection to the Hugging Face Hub" in once.reason
    assert choose_model(runs="many").name == TINY_MODEL


def test_gpu_with_internet_uses_a_real_instruct_model_in_4_bit(no_override):
    no_override.setattr(model_choice, "_has_gpu", lambda: True)
    no_override.setattr(model_choice, "hub_reachable", lambda timeout=2.0: True)
    for runs in ("once", "many"):
        choice = choose_model(runs=runs)
        assert choice.name == GPU_MODEL and choice.load_in_4bit
        assert choice.recipe == {"learning_rate": 2e-4, "max_steps": 60}  # the guide's defaults


def test_runs_must_be_once_or_many(no_override):
    with pytest.raises(FtlibError, match="runs must be 'once'"):
        choose_model(runs="twice")


def test_a_saved_adapter_is_reused_only_for_the_model_it_was_trained_from(no_override, tmp_path):
    no_override.setattr(model_choice, "_has_gpu", lambda: False)
    no_override.setattr(model_choice, "hub_reachable", lambda timeout=2.0: False)
    choice = choose_model()
    assert choice.saved_adapter(tmp_path / "missing") is None
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": CPU_MODEL}))
    assert choice.saved_adapter(tmp_path) == tmp_path
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "ftlib-tiny"}))
    assert choice.saved_adapter(tmp_path) is None


def test_environment_variables_override_model_and_4_bit(no_override, tmp_path):
    no_override.setattr(model_choice, "_has_gpu", lambda: True)
    no_override.setenv("FTLIB_MODEL", str(tmp_path))
    no_override.setenv("FTLIB_LOAD_IN_4BIT", "0")
    choice = choose_model()
    assert choice.name == str(tmp_path) and not choice.load_in_4bit
    assert "FTLIB_MODEL" in choice.reason and "FTLIB_LOAD_IN_4BIT" in choice.reason


def test_offline_mode_means_the_hub_is_not_reachable(no_override):
    no_override.setenv("HF_HUB_OFFLINE", "1")
    assert model_choice.hub_reachable() is False


# Environment check -----------------------------------------------------------------------------------
def test_environment_check_reads_this_machine():
    import torch

    report = check_environment()
    assert report.packages["torch"] == torch.__version__
    assert (report.gpu_name is not None) == torch.cuda.is_available()
    assert report.ok, report.problems
    text = str(report)
    assert "Ready to train." in text and "torch" in text
    assert report.summary().splitlines()[-1] == "Ready to train."


def test_a_missing_package_is_a_problem_that_names_the_install_command():
    report = check_environment(packages=("torch", "surely-not-installed-package"))
    assert not report.ok
    assert report.problems == ["surely-not-installed-package is not installed (the notebooks use it): "
                               "run  pip install surely-not-installed-package"]
    assert "Fix the problems above" in str(report)


def test_a_version_outside_ftlibs_range_is_a_problem(monkeypatch):
    from ftlib import environment

    report = EnvironmentReport(packages={"transformers": "4.0.0", "peft": "0.21.2"})
    environment._check_ranges(report)
    assert len(report.problems) == 1 and report.problems[0].startswith("transformers 4.0.0 is outside")
    assert 'pip install "transformers>=5.15,<6"' in report.problems[0]


def test_precision_follows_bf16_support():
    assert EnvironmentReport(gpu_name="Tesla T4", bf16=False).precision == "float16"
    assert EnvironmentReport(gpu_name="NVIDIA H200", bf16=True).precision == "bfloat16"
    assert EnvironmentReport().precision == "float32 (CPU)"


# Memory table and explorer --------------------------------------------------------------------------
def test_memory_table_marks_what_fits_a_t4():
    from ftlib.notebook import memory_table

    rows = {line.split()[0]: line for line in memory_table(methods=("qlora", "full"), gpu_gb=16).splitlines()[2:]}
    assert list(rows) == ["1B", "3B", "8B", "14B", "70B"]
    assert rows["8B"].split()[1].endswith("*")  # QLoRA 8B fits 16 GB
    assert not rows["8B"].split()[2].endswith("*")  # a full fine-tune of 8B does not
    assert "*" not in rows["70B"]


def test_memory_explorer_follows_its_dropdowns():
    from ftlib.notebook import MemoryExplorer

    explorer = MemoryExplorer(gpu_gb=16)
    assert "llama-3.1-8b, qlora" in explorer.text() and "-> fits a 16 GB GPU" in explorer.text()
    explorer.size.value = "70B"
    explorer.method.value = "full"
    assert "llama-3.1-70b, full" in explorer.text() and "does NOT fit" in explorer.text()
