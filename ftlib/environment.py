"""Check the machine before training: Python, torch and CUDA, the GPU and its precision, package versions.

Every finding is a plain sentence; a problem says what to do about it. `ftlib doctor` prints the whole
report; a notebook's setup cell prints its summary.

    >>> from ftlib.environment import check_environment
    >>> print(check_environment())
"""

import importlib.metadata
import platform
import shutil
import sys
from dataclasses import dataclass, field

# Used only when ftlib's own metadata cannot be read (ftlib imported from a source tree, never installed):
# the packages ftlib needs to train, then those the notebooks add. Installed, the ranges come from the metadata.
REQUIRED = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes")
NOTEBOOK_EXTRAS = ("ipywidgets", "matplotlib")


@dataclass
class EnvironmentReport:
    """What `check_environment` found. `ok` is False when something would stop training."""

    python: str = ""
    torch_cuda: str | None = None  # the CUDA version torch was built for; None: a CPU build
    gpu_name: str | None = None  # None: no CUDA GPU
    gpu_capability: str | None = None  # compute capability, e.g. "7.5" (T4), "9.0" (H100/H200)
    gpu_memory_gb: float | None = None
    gpu_free_gb: float | None = None
    gpu_count: int = 0  # GPUs this process sees; training uses the first (cuda:0)
    bf16: bool = False  # native bfloat16 (compute capability 8.0, Ampere, or newer); else float16 on a GPU
    precision_reason: str = "no GPU"  # why dtype=None picks the precision it does
    ram_gb: float | None = None
    disk_free_gb: float | None = None
    packages: dict = field(default_factory=dict)  # name -> installed version, or None when missing
    ranges: dict = field(default_factory=dict)  # name -> the range ftlib supports, e.g. ">=5.15,<6"
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

    def where(self):
        """One line: the device and the precision dtype=None picks there, with the reason."""
        if self.gpu_name is None:
            return ("CPU only (no GPU): float32 — fine for the tiny demo model and SmolLM2-135M; models of 1B "
                    "parameters and more need a GPU")
        capability = f"compute capability {self.gpu_capability}, " if self.gpu_capability else ""
        return (f"GPU {self.gpu_name} ({capability}{self.gpu_memory_gb:.0f} GB): "
                f"{self.precision} — {self.precision_reason}")

    def __str__(self):
        """The full report, as `ftlib doctor` prints it."""
        cuda = f"CUDA {self.torch_cuda}" if self.torch_cuda else "no CUDA (a CPU build)"
        lines = [f"Python {self.python}", f"torch {self.packages.get('torch') or 'MISSING'}, {cuda}", self.where()]
        if self.gpu_name:
            lines[-1] += f"; {self.gpu_free_gb:.1f} GB free"
        machine = [f"{self.ram_gb:.1f} GB RAM" if self.ram_gb is not None else "",
                   f"{self.disk_free_gb:.1f} GB disk free here" if self.disk_free_gb is not None else ""]
        if any(machine):
            lines.append("Memory: " + ", ".join(part for part in machine if part))
        lines.append("Packages (installed, and the range ftlib supports):")
        width = max((len(name) for name in self.packages), default=0)
        for name, version in self.packages.items():
            wanted = self.ranges.get(name) or "any version"
            mark = ("FIX" if any(problem.startswith(f"{name} ") for problem in self.problems)
                    else "ok " if version else "-  ")  # "-": missing and not needed here
            lines.append(f"  {mark} {name:<{width}}  {version or 'missing':<14} {wanted}")
        lines += [f"Note: {note}" for note in self.notes]
        lines += [f"Problem: {problem}" for problem in self.problems]
        lines.append("Ready to train." if self.ok else "Fix the problems above, then restart the runtime.")
        return "\n".join(lines)

    def summary(self):
        """A few short lines for a notebook's setup cell: the device and precision, versions, then any problems."""
        versions = ", ".join(f"{name} {self.packages[name]}" for name in ("torch", "transformers", "peft", "trl")
                             if self.packages.get(name))
        several = [note for note in self.notes if note.startswith(f"{self.gpu_count} GPUs visible")]
        lines = [self.where(), versions, *several] + [f"Problem: {problem}" for problem in self.problems]
        lines.append("Ready to train." if self.ok else "Fix the problems above, then restart the runtime.")
        return "\n".join(lines)

    def _repr_pretty_(self, printer, cycle):
        printer.text(str(self))


def auto_precision(device_index=0):
    """The precision `load_model(dtype=None)` picks here, and why: `(torch dtype, reason)`.

    bfloat16 where the GPU computes it natively (compute capability 8.0, Ampere, or newer), float16 on older
    GPUs such as the T4 (7.5), float32 on the CPU. `torch.cuda.is_bf16_supported()` alone answers True on a
    T4, because it counts emulation, which works but is slow.

    Example:
        >>> auto_precision()  # on a T4
        (torch.float16, 'no native bfloat16 below compute capability 8.0')
    """
    import torch

    if not torch.cuda.is_available():
        return torch.float32, "no GPU"
    if native_bf16(device_index):
        return torch.bfloat16, "native bfloat16 from compute capability 8.0 (Ampere)"
    return torch.float16, "no native bfloat16 below compute capability 8.0"


def native_bf16(device_index=0):
    """True when the GPU computes bfloat16 in hardware, not by emulation.

    Example: `native_bf16()  # False on a T4, True on an A100 or H100`
    """
    import torch

    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch before 2.3 has no including_emulation argument
        return tuple(torch.cuda.get_device_capability(device_index)) >= (8, 0)


def several_gpus_note(count):
    """The one line `train` and the report print when a process sees several GPUs; None for one or none."""
    if count < 2:
        return None
    every = "both" if count == 2 else f"all {count}"
    return (f"{count} GPUs visible; training on cuda:0. To use {every}, run your script with one process per GPU: "
            f"torchrun --nproc_per_node {count} your_script.py (or accelerate launch your_script.py)")


def supported_ranges():
    """{package: (range, needed by)} for ftlib's dependencies and its notebooks extra, from ftlib's installed metadata.

    Falls back to `REQUIRED` and `NOTEBOOK_EXTRAS` without ranges when ftlib is not installed.

    Example:
        >>> supported_ranges()["transformers"]
        ('>=5.15,<6', 'ftlib needs it to train')
    """
    try:
        from packaging.requirements import Requirement
        requirements = importlib.metadata.requires("ftlib") or []
    except (ImportError, importlib.metadata.PackageNotFoundError):
        requirements = []
    ranges = {}
    for text in requirements:
        requirement = Requirement(text)
        core = requirement.marker is None or requirement.marker.evaluate({"extra": ""})
        if not core and not requirement.marker.evaluate({"extra": "notebooks"}):
            continue  # another extra (gguf, harness, dev) or another platform
        # Lower bound first, the order pyproject.toml writes: ">=5.15,<6".
        parts = sorted(requirement.specifier, key=lambda spec: (not spec.operator.startswith((">", "~", "=")), str(spec)))
        ranges[requirement.name] = (",".join(str(part) for part in parts),
                                    "ftlib needs it to train" if core else "the notebooks use it")
    if not ranges:
        ranges = {name: ("", "ftlib needs it to train") for name in REQUIRED}
        ranges |= {name: ("", "the notebooks use it") for name in NOTEBOOK_EXTRAS}
    return ranges


def check_environment(packages=None):
    """Look at Python, torch, the GPU, memory, disk and packages; return an `EnvironmentReport` (print it to read it).

    `packages`: names to check; None checks every dependency of ftlib and of its notebooks extra.

    Example:
        >>> report = check_environment(); report.ok
        True
    """
    report = EnvironmentReport(python=platform.python_version())
    ranges = supported_ranges()
    for name in ranges if packages is None else packages:
        wanted, needed_by = ranges.get(name, ("", "the notebooks use it"))
        report.ranges[name] = wanted
        report.packages[name] = _version(name)
        if report.packages[name] is None and not (name == "jupyter" and _in_a_notebook()):
            report.problems.append(f"{name} is not installed ({needed_by}): run  {pip_line(name, wanted)}")
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


def pip_line(name, wanted=""):
    """The pip command that installs `name` within `wanted`: `pip install "transformers>=5.15,<6"`."""
    return f'pip install "{name}{wanted}"' if wanted else f"pip install {name}"


def _check_gpu(report):
    try:
        import torch
    except ImportError:
        return  # already reported as a missing package
    report.torch_cuda = torch.version.cuda
    if not torch.cuda.is_available():
        report.notes.append(
            "no GPU: models of 1B parameters and more need one (the tiny demo model and SmolLM2-135M train on a "
            "CPU). On Colab choose Runtime > Change runtime type > T4 GPU; "
            "on Kaggle Settings > Accelerator > GPU T4"
        )
        return
    properties = torch.cuda.get_device_properties(0)
    free, total = torch.cuda.mem_get_info(0)
    report.gpu_name = properties.name
    report.gpu_capability = f"{properties.major}.{properties.minor}"
    report.gpu_memory_gb = total / 1e9
    report.gpu_free_gb = free / 1e9
    dtype, report.precision_reason = auto_precision(0)
    report.bf16 = dtype == torch.bfloat16
    report.gpu_count = torch.cuda.device_count()
    if several_gpus_note(report.gpu_count):
        report.notes.append(several_gpus_note(report.gpu_count))
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
        from packaging.specifiers import SpecifierSet
    except ImportError:
        return
    ranges = supported_ranges()
    for name, installed in report.packages.items():
        wanted = report.ranges.get(name) or ranges.get(name, ("", ""))[0]
        if installed is None or not wanted:
            continue
        report.ranges[name] = wanted
        if not SpecifierSet(wanted).contains(installed, prereleases=True):
            report.problems.append(
                f"{name} {installed} is outside the supported range {wanted}: run  {pip_line(name, wanted)}"
            )


def _in_a_notebook():
    return "ipykernel" in sys.modules  # the kernel runs, so the `jupyter` meta-package is not needed here


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
