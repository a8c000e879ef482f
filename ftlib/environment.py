"""Check the machine before training: GPU, its memory, bf16 support, and package versions.

Every finding is a plain sentence; a problem says what to do about it.

    >>> from ftlib.environment import check_environment
    >>> print(check_environment())
"""

import importlib.metadata
import platform
import shutil
from dataclasses import dataclass, field

# Packages ftlib needs to train, then those the notebooks add.
REQUIRED = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes")
NOTEBOOK_EXTRAS = ("ipywidgets", "matplotlib")


@dataclass
class EnvironmentReport:
    """What `check_environment` found. `ok` is False when something would stop training."""

    python: str = ""
    gpu_name: str | None = None  # None: no CUDA GPU
    gpu_memory_gb: float | None = None
    gpu_free_gb: float | None = None
    bf16: bool = False  # bfloat16 supported (Ampere or newer); else training uses float16 on a GPU
    ram_gb: float | None = None
    disk_free_gb: float | None = None
    packages: dict = field(default_factory=dict)  # name -> installed version, or None when missing
    problems: list = field(default_factory=list)  # would stop training: each names the fix
    notes: list = field(default_factory=list)  # worth knowing, nothing to fix

    @property
    def ok(self):
        return not self.problems

    @property
    def precision(self):
        """The training precision ftlib picks with dtype=None on this machine."""
        if self.gpu_name is None:
            return "float32 (CPU)"
        return "bfloat16" if self.bf16 else "float16"

    def __str__(self):
        lines = [f"Python {self.python}"]
        if self.gpu_name:
            lines.append(
                f"GPU: {self.gpu_name}, {self.gpu_memory_gb:.1f} GB ({self.gpu_free_gb:.1f} GB free); "
                f"bf16 {'supported' if self.bf16 else 'not supported'}, so training uses {self.precision}"
            )
        else:
            lines.append("GPU: none found, so training runs on the CPU (fine for the tiny demo model)")
        if self.ram_gb is not None:
            lines.append(f"Memory: {self.ram_gb:.1f} GB RAM")
        if self.disk_free_gb is not None:
            lines.append(f"Disk: {self.disk_free_gb:.1f} GB free here")
        lines.append("Packages: " + ", ".join(f"{name} {version or 'MISSING'}" for name, version in self.packages.items()))
        lines += [f"Note: {note}" for note in self.notes]
        lines += [f"Problem: {problem}" for problem in self.problems]
        lines.append("Ready to train." if self.ok else "Fix the problems above, then restart the runtime.")
        return "\n".join(lines)

    def summary(self):
        """Two short lines for a notebook's setup cell; the problems, if any, follow."""
        where = f"GPU {self.gpu_name} ({self.gpu_memory_gb:.0f} GB, {self.precision})" if self.gpu_name else "CPU only"
        versions = ", ".join(f"{name} {self.packages[name]}" for name in ("torch", "transformers", "peft", "trl")
                             if self.packages.get(name))
        lines = [f"{where}; {versions}"] + [f"Problem: {problem}" for problem in self.problems]
        lines.append("Ready to train." if self.ok else "Fix the problems above, then restart the runtime.")
        return "\n".join(lines)

    def _repr_pretty_(self, printer, cycle):
        printer.text(str(self))


def check_environment(packages=REQUIRED + NOTEBOOK_EXTRAS):
    """Look at the GPU, memory, disk and packages; return an `EnvironmentReport` (print it to read it).

    Example:
        >>> report = check_environment(); report.ok
        True
    """
    report = EnvironmentReport(python=platform.python_version())
    for name in packages:
        report.packages[name] = _version(name)
        if report.packages[name] is None:
            where = "ftlib needs it to train" if name in REQUIRED else "the notebooks use it"
            report.problems.append(f"{name} is not installed ({where}): run  pip install {name}")
    _check_ranges(report)
    _check_gpu(report)
    report.ram_gb = _ram_gb()
    report.disk_free_gb = shutil.disk_usage(".").free / 1e9
    if report.disk_free_gb < 5:
        report.notes.append(
            f"only {report.disk_free_gb:.1f} GB of disk free: merged 16-bit weights of a 1B model take ~2.5 GB, "
            "of an 8B model ~16 GB; save LoRA adapters (tens of MB) instead"
        )
    return report


def _check_gpu(report):
    try:
        import torch
    except ImportError:
        return  # already reported as a missing package
    if not torch.cuda.is_available():
        report.notes.append(
            "no GPU: real models need one. On Colab choose Runtime > Change runtime type > T4 GPU; "
            "on Kaggle Settings > Accelerator > GPU T4"
        )
        return
    properties = torch.cuda.get_device_properties(0)
    free, total = torch.cuda.mem_get_info(0)
    report.gpu_name = properties.name
    report.gpu_memory_gb = total / 1e9
    report.gpu_free_gb = free / 1e9
    report.bf16 = torch.cuda.is_bf16_supported()
    if report.gpu_memory_gb < 12:
        report.notes.append(
            f"{report.gpu_memory_gb:.0f} GB of GPU memory: keep to models of about 3B parameters or fewer in 4-bit"
        )
    if report.gpu_free_gb < 0.5 * report.gpu_memory_gb:
        report.notes.append(
            f"only {report.gpu_free_gb:.1f} GB of GPU memory is free: another notebook or model may hold the rest; "
            "restart the runtime to free it"
        )


def _check_ranges(report):
    """Compare installed versions with the ranges ftlib declares (read from its own package metadata)."""
    try:
        from packaging.requirements import Requirement
        requirements = importlib.metadata.requires("ftlib") or []
    except (ImportError, importlib.metadata.PackageNotFoundError):
        return
    for text in requirements:
        requirement = Requirement(text)
        installed = report.packages.get(requirement.name)
        if requirement.marker is not None or installed is None or not requirement.specifier:
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            report.problems.append(
                f"{requirement.name} {installed} is outside the tested range {requirement.specifier}: "
                f"run  pip install '{requirement.name}{requirement.specifier}'"
            )


def _version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _ram_gb():
    try:
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return None  # not available on this system (e.g. Windows)
