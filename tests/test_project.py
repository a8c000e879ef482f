"""Packaging promises: the README's commands, CI, supported version ranges, the console script."""

import re
from pathlib import Path

from packaging.requirements import Requirement

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


def test_version_ranges_admit_colab_and_the_gpu_host():
    dependencies, _ = _dependencies()
    needed = {
        "transformers": ["5.15.0", "5.17.0"],
        "peft": ["0.20.0", "0.21.0"],
        "accelerate": ["1.14.0", "1.15.0"],
        "datasets": ["4.0.0", "4.3.0"],
        "trl": ["1.15.0"],
        "torch": ["2.11.0", "2.13.0"],
    }
    for name, versions in needed.items():
        for version in versions:
            assert dependencies[name].specifier.contains(version), (name, version)
    assert {"bitsandbytes", "trl", "datasets", "peft"} <= set(dependencies)


def test_ci_pins_versions_inside_the_supported_ranges():
    dependencies, _ = _dependencies()
    for line in (ROOT / ".ci" / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            if name in dependencies:
                assert dependencies[name].specifier.contains(version), line


def test_console_script_and_extras_exist():
    _, project = _dependencies()
    assert project["scripts"]["ftlib"] == "ftlib.cli:main"
    assert {"notebooks", "dev"} <= set(project["optional-dependencies"])
    assert project["requires-python"] == ">=3.10"
