"""Colab readiness of every notebook: the GPU accelerator metadata, an "Open in Colab" link and a setup cell that
installs from the one repository URL in pyproject.toml's [tool.ftlib] (notebooks/sync_colab.py writes them)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "notebooks"))
import sync_colab  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_every_notebook_is_in_sync_with_the_configured_repository():
    assert sync_colab.sync(write=False) == [], "run: python notebooks/sync_colab.py"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name[:2])
def test_notebook_opens_on_a_colab_gpu_links_itself_and_installs_from_the_repository(path):
    url, branch = sync_colab.repository()
    notebook = nbformat.read(path, as_version=4)
    assert notebook.metadata["accelerator"] == "GPU" and notebook.metadata["colab"]["gpuType"] == "T4"
    title = notebook.cells[0].source
    link = f"https://colab.research.google.com/github/{url.removeprefix('https://github.com/')}/blob/{branch}/" \
           f"notebooks/{path.name}"
    assert f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({link})" in title
    setup = next(cell.source for cell in notebook.cells if cell.cell_type == "code")
    assert re.findall(r'^REPOSITORY = "(.*)"', setup, re.M) == [url]


def test_a_fork_changes_one_place_and_the_script_moves_every_link_and_setup_cell(tmp_path):
    copy = tmp_path / "fork"
    shutil.copytree(ROOT / "notebooks", copy / "notebooks", ignore=shutil.ignore_patterns("ftlib_outputs"))
    pyproject = (ROOT / "pyproject.toml").read_text()
    url, _ = sync_colab.repository()
    (copy / "pyproject.toml").write_text(pyproject.replace(f'repository = "{url}"',
                                                           'repository = "https://github.com/someone/ftlib-fork"'))
    script = [sys.executable, str(copy / "notebooks" / "sync_colab.py")]
    assert subprocess.run([*script, "--check"], capture_output=True, text=True).returncode == 1  # out of date
    written = subprocess.run(script, capture_output=True, text=True)
    assert written.returncode == 0, written.stdout + written.stderr
    assert subprocess.run([*script, "--check"], capture_output=True, text=True).returncode == 0
    for path in sorted((copy / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        original = nbformat.read(ROOT / "notebooks" / path.name, as_version=4)
        assert "github/someone/ftlib-fork/blob/" in notebook.cells[0].source and url not in notebook.cells[0].source
        assert 'REPOSITORY = "https://github.com/someone/ftlib-fork"' in path.with_suffix(".py").read_text()
        assert [cell.get("outputs") for cell in notebook.cells] == [cell.get("outputs") for cell in original.cells]
