"""The notebooks' shape, without running them: skeleton, markers, prose, no saved errors, each executed copy
(.ipynb) the same as its source (.py), the setup cells the same in every notebook, only the copies collected
by nbval; and what the setup cell does where ftlib is installed, where a clone is at hand, and where neither is
(it installs from the repository's URL)."""

import difflib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
SOURCES = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))  # 01-08: the guide's sections; 09 on: beyond the guide
PATHS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
MARKERS = ("# NBVAL_CHECK_OUTPUT", "# NBVAL_IGNORE_OUTPUT")
MAX_CODE_LINES = 16  # "roughly fifteen lines or fewer", counting the nbval marker line


def _number(path):
    return path.name[:2]


def _markdown(notebook):
    return [cell.source for cell in notebook.cells if cell.cell_type == "markdown"]


def test_there_are_eight_notebooks_one_per_guide_section_each_a_source_and_its_executed_copy():
    assert [_number(path) for path in SOURCES][:8] == ["01", "02", "03", "04", "05", "06", "07", "08"]
    assert [path.stem for path in PATHS] == [path.stem for path in SOURCES], "run: python notebooks/execute.py"


@pytest.mark.parametrize("source", SOURCES, ids=_number)
def test_skeleton_title_learn_setup_recap_questions_next(source):
    markdown = _markdown(jupytext.read(source))
    assert markdown[0].startswith(f"# {_number(source)} · ") and "What you will learn" in markdown[0]
    assert any(text.startswith("## Setup") for text in markdown)
    assert any(text.startswith("## Recap") for text in markdown)
    questions = next(text for text in markdown if text.startswith("## Check yourself"))
    assert len(re.findall(r"^\d+\. ", questions, flags=re.M)) >= 3
    number = int(_number(source))
    following = f"{number + 1:02d}_"  # each leads to the next; the last one back to 01
    target = following if any(NOTEBOOKS.glob(f"{following}*.py")) else "01_"
    links = re.findall(r"\]\(([^)]+\.ipynb)\)", markdown[-1])
    assert links and links[0].startswith(target) and (NOTEBOOKS / links[0]).is_file()
    numbered = [text for text in markdown if re.match(r"## \d+\. ", text)]
    assert len(numbered) >= 2, "sections are numbered"


@pytest.mark.parametrize("source", SOURCES, ids=_number)
def test_every_code_cell_has_prose_before_it_a_marker_and_few_lines(source):
    notebook = jupytext.read(source)
    previous = None
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert previous is not None, f"cell {index} is the first cell"
            lines = cell.source.splitlines()
            assert lines[0] in MARKERS, f"cell {index} starts with {lines[0]!r}, not an nbval marker"
            assert len(lines) <= MAX_CODE_LINES, f"cell {index} has {len(lines)} lines"
            assert not re.search(r"^\s*(def|class) ", cell.source, flags=re.M), f"cell {index} defines library code"
        previous = cell
    # prose before each code cell: the cell before is markdown, or a code cell itself preceded by prose
    kinds = [cell.cell_type for cell in notebook.cells]
    for index, kind in enumerate(kinds):
        if kind == "code":
            before = kinds[:index]
            assert "markdown" in before[-3:], f"cell {index}: three code cells in a row without prose"
    assert sum(cell.source.startswith(MARKERS[0]) for cell in notebook.cells if cell.cell_type == "code") >= 1


def _setup_text(source):
    """The setup cells as written in a source: the "## Setup" markdown cell and the code cells that follow it."""
    text = source.read_text()
    start = text.index("# %% [markdown]\n# ## Setup\n")
    end = text.index("# %% [markdown]", start + 1)
    return text[start:end]


def test_the_setup_cells_are_identical_in_every_notebook():
    first = SOURCES[0]
    for source in SOURCES[1:]:
        diff = "".join(difflib.unified_diff(_setup_text(first).splitlines(True), _setup_text(source).splitlines(True),
                                            first.name, source.name))
        assert not diff, f"the setup cells differ: make the same edit in all eight notebooks\n{diff}"


@pytest.mark.parametrize("source", SOURCES, ids=_number)
def test_executed_copy_has_the_cells_and_metadata_of_its_source(source):
    expected = jupytext.read(source)
    saved = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    fix = f"edit {source.name}, then run: python notebooks/execute.py {_number(source)}"
    assert [(cell.cell_type, cell.source) for cell in saved.cells] == [
        (cell.cell_type, cell.source) for cell in expected.cells], fix
    for key, value in expected.metadata.items():
        if key != "jupytext":  # describes the .py file only
            assert saved.metadata.get(key) == value, f"metadata {key!r}: {fix}"


@pytest.mark.parametrize("path", PATHS, ids=_number)
def test_saved_outputs_exist_and_none_is_an_error(path):
    notebook = nbformat.read(path, as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code_cells), f"run: python notebooks/execute.py {_number(path)}"
    for cell in code_cells:
        for output in cell.outputs:
            assert output.output_type != "error", f"saved error in cell: {cell.source[:80]!r}"
            assert "Traceback (most recent call last)" not in str(output.get("text", ""))


def test_training_notebooks_plot_live_loss_and_keep_the_final_figure():
    for number in ("01", "04", "06"):
        notebook = nbformat.read(next(NOTEBOOKS.glob(f"{number}_*.ipynb")), as_version=4)
        plotted = [cell for cell in notebook.cells if cell.cell_type == "code" and "LiveLossPlot(" in cell.source]
        assert plotted, number
        for cell in plotted:
            images = [output for output in cell.outputs if "image/png" in output.get("data", {})]
            assert len(images) == 1, f"{number}: one final figure per training cell, got {len(images)}"


def test_nbval_collects_the_executed_copies_and_no_python_file():
    """`pytest --nbval-lax notebooks` runs the eight .ipynb; the .py sources and execute.py are not test modules."""
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "--nbval-lax", "-p", "no:cacheprovider", "notebooks"]
    result = subprocess.run(command, cwd=NOTEBOOKS.parent, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    collected = {line.split("::")[0] for line in result.stdout.splitlines() if "::" in line}
    assert collected == {f"notebooks/{path.name}" for path in PATHS}, result.stdout


# --- The claims table in notebooks/README.md: every guide section's claims, each at a place that exists ---

CLAIMS_TITLE = "## The guide's claims, and where each is shown"
PLACE = re.compile(r"\[(\d\d)\]\((\d\d_\w+\.ipynb)\)(?: › ([^;|\[]+))?")
# A few words of each claim of the guide's eight sections (docs: DESIGN.md), as the table names them.
GUIDE_CLAIMS = {
    "1": ["optimise a task", "customise behaviour", "inject knowledge"],
    "2": ["LoRA", "QLoRA", "8-bit", "full fine-tune", "`max_seq_length` 2048", "`dtype=None`", "`load_in_4bit=True`"],
    "3": ["question/answer pairs", "Alpaca", "conversations", "raw text", "your own file"],
    "4": ["learning rate 2e-4", "1e-4 to 5e-5", "epochs 1-3", "rank 4-64", "alpha at least the rank", "dropout",
          "under-fitting and its remedies", "over-fitting and its remedies"],
    "5": ["GPU and memory", "no bf16", "install"],
    "6": ["batch size 2, gradient accumulation 4", "`max_steps=60`", "learning rate 2e-4", "near 0.5, not 0", "20%"],
    "7": ["streaming", "multi-turn chat", "`max_new_tokens`", "about 100 MB for an 8B model", "vLLM / Ollama", "Hub"],
    "8": ["DPO, ORPO, KTO", "GRPO", "continued pretraining", "vision"],
}


def _claim_rows():
    text = (NOTEBOOKS / "README.md").read_text()
    assert CLAIMS_TITLE in text, f"notebooks/README.md needs the section {CLAIMS_TITLE!r}"
    table = text.split(CLAIMS_TITLE, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[1:]]  # rows[0]: the header


def _headings(notebook_file):
    source = (NOTEBOOKS / notebook_file).with_suffix(".py").read_text()
    return {heading.strip() for heading in re.findall(r"^# ## (.+)$", source, flags=re.M)}


def test_claims_table_lists_every_claim_of_the_eight_guide_sections():
    rows = _claim_rows()
    assert {row[0].split()[0] for row in rows} == set(GUIDE_CLAIMS)
    for section, claims in GUIDE_CLAIMS.items():
        named = " ".join(row[1] for row in rows if row[0].split()[0] == section)
        missing = [claim for claim in claims if claim not in named]
        assert not missing, f"guide section {section}: no row names {missing}"


def test_claims_table_names_notebook_sections_that_exist_and_says_why_a_claim_is_not_run():
    for section, claim, where, shown in _claim_rows():
        places = PLACE.findall(where)
        assert places, f"{claim!r}: name the notebook section that shows it"
        for number, notebook_file, heading in places + PLACE.findall(shown):
            assert notebook_file.startswith(number) and (NOTEBOOKS / notebook_file).is_file(), notebook_file
            if heading:
                assert heading.strip() in _headings(notebook_file), f"{claim!r}: no section {heading.strip()!r} in {notebook_file}"
        for reason in re.findall(r"explained, not run(.{0,3})", shown):
            assert reason.startswith(": "), f"{claim!r}: 'explained, not run' needs its reason after a colon"


# --- The setup cell: nothing where ftlib is installed; else a clone of the repository, else FTLIB_SOURCE, else the repository's URL ---

DRIVER = """
import subprocess, sys
commands = []
subprocess.run = lambda command, **options: commands.append(command)  # record pip instead of running it
exec(compile(sys.stdin.read(), "setup cell", "exec"))
print("pip:", commands)
"""


def _setup_cell():
    sources = {next(cell.source for cell in jupytext.read(source).cells if cell.cell_type == "code")
               for source in SOURCES}
    assert len(sources) == 1, "every notebook starts with the same setup cell"
    return sources.pop()


def _run_setup_cell(folder, installed, source=None):
    """Run the setup cell in a fresh Python in `folder`; without site-packages (-S) ftlib is not installed."""
    environment = {key: value for key, value in os.environ.items() if key != "FTLIB_SOURCE"}
    if source:
        environment["FTLIB_SOURCE"] = source
    flags = [] if installed else ["-S"]
    return subprocess.run([sys.executable, *flags, "-c", DRIVER], input=_setup_cell(), cwd=folder,
                          env=environment, capture_output=True, text=True, timeout=60)


def _clone(folder):
    folder.mkdir(parents=True)
    shutil.copy(NOTEBOOKS.parent / "pyproject.toml", folder / "pyproject.toml")
    return folder


def test_setup_cell_does_nothing_where_ftlib_is_installed(tmp_path):
    result = _run_setup_cell(tmp_path, installed=True, source="/nowhere/ftlib.whl")
    assert result.returncode == 0, result.stderr
    assert "ftlib is already installed: nothing to do." in result.stdout and "pip: []" in result.stdout


def test_setup_cell_installs_a_clone_found_here_above_or_one_folder_down(tmp_path):
    clone = _clone(tmp_path / "ftlib-main")
    (clone / "notebooks").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "pyproject.toml").write_text('[project]\nname = "other"\n')
    for folder in (tmp_path, clone, clone / "notebooks"):  # after a git clone; in the clone; beside the notebooks
        result = _run_setup_cell(folder, installed=False, source="/nowhere/ftlib.whl")  # a clone comes first
        assert result.returncode == 0, result.stderr
        assert f"'install', '-q', '{clone}', 'ftlib[notebooks]']" in result.stdout, result.stdout
        assert f"Installed ftlib from {clone}." in result.stdout


def test_setup_cell_installs_a_fresh_clone_named_ftlib(tmp_path):
    """`git clone .../ftlib` makes a folder that imports as an empty namespace package: still not installed."""
    clone = _clone(tmp_path / "ftlib")
    result = _run_setup_cell(tmp_path, installed=False)
    assert result.returncode == 0, result.stderr
    assert f"'install', '-q', '{clone}', 'ftlib[notebooks]']" in result.stdout, result.stdout


def test_setup_cell_does_nothing_where_ftlib_is_importable_from_a_checkout(tmp_path):
    """ftlib on PYTHONPATH (a checkout used in place, as on an offline GPU machine) needs no install."""
    checkout = NOTEBOOKS.parent
    environment = dict(os.environ, PYTHONPATH=str(checkout))
    result = subprocess.run([sys.executable, "-S", "-c", DRIVER], input=_setup_cell(), cwd=checkout / "notebooks",
                            env=environment, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "nothing to do" in result.stdout and "pip: []" in result.stdout


def test_setup_cell_installs_ftlib_source_when_there_is_no_clone(tmp_path):
    result = _run_setup_cell(tmp_path, installed=False, source="/uploads/ftlib-0.1.0-py3-none-any.whl")
    assert result.returncode == 0, result.stderr
    assert "'install', '-q', '/uploads/ftlib-0.1.0-py3-none-any.whl', 'ftlib[notebooks]']" in result.stdout


def test_setup_cell_installs_from_the_repository_url_without_a_clone_or_ftlib_source(tmp_path):
    """A fresh Colab runtime: no clone, no FTLIB_SOURCE, so pip installs git+<the URL in pyproject's [tool.ftlib]>."""
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "not-ftlib"\n')
    result = _run_setup_cell(tmp_path, installed=False)
    assert result.returncode == 0, result.stderr
    url = re.search(r'^repository = "(.+)"', (NOTEBOOKS.parent / "pyproject.toml").read_text(), re.M).group(1)
    assert f"'install', '-q', 'git+{url}', 'ftlib[notebooks]']" in result.stdout, result.stdout
    assert f"Installed ftlib from git+{url}." in result.stdout
