"""Packaging promises: the README's commands, CI, supported version ranges, the console script, and a wheel
that carries the demo world."""

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from ftlib.demo import load_headlines

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands():
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_opens_with_the_test_and_quickstart_commands():
    first, second = _readme_commands()[:2]
    assert "pytest" in first and "pip install" in first and "torch==2.13.0" in first
    assert second.strip().endswith("ftlib quickstart")
    # nothing but the title comes before the first command
    assert (ROOT / "README.md").read_text().index(first) < 400


def test_ci_runs_the_readme_test_command_verbatim():
    assert _readme_commands()[0] in (ROOT / ".ci" / "run").read_text()


def _dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {Requirement(text).name: Requirement(text) for text in project["dependencies"]}, project


def _pins(constraints):
    lines = (ROOT / ".ci" / constraints).read_text().splitlines()
    return dict(line.split("==") for line in lines if "==" in line and not line.startswith("#"))


def test_version_ranges_are_what_ci_tests_and_admit_colab_and_the_gpu_host():
    """Each lower bound is a version the oldest set pins (Colab's where Colab has the package); the newest set
    lies inside every range."""
    dependencies, project = _dependencies()
    oldest = _pins("constraints-oldest.txt")
    colab = {"transformers": "5.15.0", "peft": "0.20.0", "accelerate": "1.14.0", "ipywidgets": "7.7.1"}
    widgets = Requirement(next(text for text in project["optional-dependencies"]["notebooks"] if "ipywidgets" in text))
    for name, requirement in [*dependencies.items(), ("ipywidgets", widgets)]:
        if name in ("torch", "bitsandbytes", "safetensors"):
            continue  # one build of each is tested (torch's CPU wheel is the one this machine has)
        lower = next(Version(spec.version) for spec in requirement.specifier if spec.operator == ">=")
        assert Version(oldest[name]).release[:len(lower.release)] == lower.release, (name, lower, oldest[name])
        assert name not in colab or oldest[name] == colab[name], name
    gpu_host = {"transformers": "5.17.0", "peft": "0.21.0", "accelerate": "1.15.0", "torch": "2.11.0"}
    for name, version in gpu_host.items():
        assert dependencies[name].specifier.contains(version), (name, version)


@pytest.mark.parametrize("constraints", ["constraints.txt", "constraints-oldest.txt"])
def test_ci_pins_versions_inside_the_supported_ranges(constraints):
    dependencies, project = _dependencies()
    extras = [Requirement(text) for texts in project["optional-dependencies"].values() for text in texts]
    ranges = {**{requirement.name: requirement for requirement in extras}, **dependencies}
    for name, version in _pins(constraints).items():
        if name in ranges:
            assert ranges[name].specifier.contains(version), (constraints, name, version)


def test_console_script_and_extras_exist():
    _, project = _dependencies()
    assert project["scripts"]["ftlib"] == "ftlib.cli:main"
    assert {"notebooks", "dev"} <= set(project["optional-dependencies"])
    assert project["requires-python"] == ">=3.10"


# --- The wheel: what `pip install git+URL`, a wheel or a clone (non-editable) gives a Colab or Kaggle user ---

DEMO_FILES = ["ftlib-tiny/model.safetensors", "ftlib-tiny/tokenizer.json", "ftlib-tiny/tokenizer_config.json",
              "ftlib-tiny/config.json", "ftlib-tiny/chat_template.jinja", "headlines/train.jsonl", "headlines/test.jsonl",
              "samples/my_data.csv", "samples/my_data.jsonl"]
PIP_ENVIRONMENT = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def _build_requirements_installed():
    from importlib.metadata import PackageNotFoundError, version

    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    try:
        return all(Requirement(text).specifier.contains(version(Requirement(text).name)) for text in requires)
    except PackageNotFoundError:
        return False


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """A wheel built from a copy of the checkout (building in place would leave build/ and egg-info behind)."""
    folder = tmp_path_factory.mktemp("wheel")
    source = folder / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("ftlib", "data"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(folder / "dist"), str(source)]
    if _build_requirements_installed():
        command.append("--no-build-isolation")  # offline; otherwise pip fetches setuptools from PyPI
    subprocess.run(command, check=True, capture_output=True, text=True, env=PIP_ENVIRONMENT)
    (built,) = (folder / "dist").glob("ftlib-*.whl")
    return built


def test_wheel_ships_the_demo_world_and_finds_it_outside_the_checkout(wheel, tmp_path):
    with zipfile.ZipFile(wheel) as archive:
        sizes = {info.filename: info.file_size for info in archive.infolist()}
    # every demo file of the checkout, byte for byte the same size, inside the package
    data = ROOT / "data"
    checkout_files = [path for folder in ("ftlib-tiny", "headlines", "samples") for path in (data / folder).iterdir()]
    assert {str(path.relative_to(data)) for path in checkout_files} >= set(DEMO_FILES)
    for path in checkout_files:
        assert sizes.get(f"ftlib/demo/data/{path.relative_to(data)}") == path.stat().st_size, path
    # all of ftlib's code (pyproject's package list is complete), and nothing but ftlib: no tests, notebooks, benchmarks
    modules = {str(path.relative_to(ROOT)) for path in (ROOT / "ftlib").rglob("*.py") if "__pycache__" not in path.parts}
    assert modules <= set(sizes)
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert {name.split("/")[0] for name in sizes} == {"ftlib", f"ftlib-{version}.dist-info"}
    code_bytes = sum(size for name, size in sizes.items() if not name.startswith("ftlib/demo/data/"))
    assert code_bytes < 2_000_000, f"the wheel holds {code_bytes:,} bytes besides the demo data"

    # installed (not editable), run from a folder outside the checkout: the demo model is found inside the install
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, env=PIP_ENVIRONMENT)
    script = (
        "import json, sys; sys.path.insert(0, sys.argv[1])\n"
        "import ftlib.demo\n"
        "print(json.dumps({'package': ftlib.demo.__file__, 'model': str(ftlib.demo.tiny_model_path()),\n"
        "                  'test_rows': ftlib.demo.load_headlines('test')}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(site)], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(found["package"]).is_relative_to(site)
    model = Path(found["model"])
    assert model.is_relative_to(site / "ftlib" / "demo" / "data")
    assert (model / "model.safetensors").stat().st_size == (data / "ftlib-tiny" / "model.safetensors").stat().st_size
    assert found["test_rows"] == load_headlines("test")


def test_setup_cell_install_command_resolves_with_the_notebooks_extra(wheel):
    # What the notebooks' setup cell runs, `pip install <source> "ftlib[notebooks]"`, offline and without installing.
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "-q", "--report", "-", str(wheel),
         "ftlib[notebooks]"], capture_output=True, text=True, env=PIP_ENVIRONMENT)
    assert result.returncode == 0, result.stderr[-2000:]
    (ftlib_item,) = [item for item in json.loads(result.stdout)["install"] if item["metadata"]["name"] == "ftlib"]
    if "requested_extras" in ftlib_item:  # pip 23.2 (Python 3.11's own, as in CI) leaves this field out
        assert ftlib_item["requested_extras"] == ["notebooks"]
    assert ftlib_item["download_info"]["url"].endswith(wheel.name)
