"""Turn benchmark results (results.json) into the tables of benchmarks/README.md.

    python benchmarks/run.py --report benchmarks/results.json

Ratios are taken within one results file (one run on one GPU), never across runs.
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _case(spec):
    """The case a run belongs to, without the system: shape, method, mix, length, dtype, cap."""
    return (spec["shape"], spec["method"], spec["mix"], spec["length"], spec["dtype"], spec.get("memory_cap_gb"))


OFF_LABELS = {"unread_outputs": "down_proj's multiply kept in the recomputation"}  # switches "without X" misreads


def _label(spec):
    extra = []
    if spec.get("checkpointing") == "offload":
        extra.append("offload checkpointing")
    elif spec.get("checkpointing") is True:
        extra.append("checkpointing on the GPU")
    if spec.get("padding_free"):
        extra.append("padding-free")
    extra += [OFF_LABELS.get(name, f"without {name.replace('_', ' ')}") for name in spec.get("off", ())]
    if spec.get("compile"):
        extra.append("layers compiled")
    if spec.get("profile"):
        extra.append(f"{'Python' if spec['profile'] == 'python' else 'GPU'} profile of one more step")
    if spec.get("form"):
        extra.append(spec["form"])
    if spec.get("repeat"):
        extra.append(f"run {spec['repeat']}, compared with the other systems' run {spec['repeat']}")
    return spec["system"] + (f" ({', '.join(extra)})" if extra else "")


def estimate_for(run):
    """ftlib.estimate_memory for the settings of one run: ftlib's configuration, or the plain recipe's upcasting."""
    from ftlib.speed.memory import estimate_memory

    spec = run["spec"]
    # the mode the run used; runs before ftlib recorded it had True unless the spec chose another
    checkpointing = run.get("checkpointing", spec.get("checkpointing", True))
    return estimate_memory(spec["shape"], "qlora" if spec["method"] == "qlora" else "lora",
                           max_seq_length=spec["length"], batch_size=spec["batch"],
                           gradient_checkpointing=checkpointing,
                           float32_upcasting=spec["system"] == "plain")


def tables(results):
    """Markdown lines for one results file."""
    lines = [f"### {results['date']}, {results['gpu']}", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items() if v), "",
             f"Command: `{results['command']}`", ""]
    if results.get("note"):
        lines += [f"Note: {results['note']}", ""]
    lines += ["| case | system | tokens/s | peak reserved GB | peak allocated GB | load s | first loss | last loss "
              "| parity loss | vs plain tokens/s | vs unsloth tokens/s | vs unsloth reserved |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    by_case = {}
    for run in results["runs"]:
        by_case.setdefault(_case(run["spec"]), []).append(run)
    for case, runs in by_case.items():
        variants = ("checkpointing", "padding_free", "off", "compile")
        reference = {}
        for run in runs:  # the first run of each system with its default settings (of each repeat)
            if "error" not in run and not any(run["spec"].get(key) for key in variants):
                reference.setdefault((run["spec"]["system"], run["spec"].get("repeat")), run)
        for run in runs:
            spec = run["spec"]
            name = f"{case[0]} {case[1]} {case[2]} {case[3]} {case[4]}" + (f" cap {case[5]} GiB" if case[5] else "")
            if "error" in run:
                last = [line for line in run.get("log_tail", "").splitlines() if line.strip()][-1:]
                why = f" ({last[0].strip()[:90]})" if last else ""
                lines.append(f"| {name} | {_label(spec)} | error: {run['error']}{why} | | | | | | | | | |")
                continue
            ratios = []
            for other, key in (("plain", "tokens_per_second"), ("unsloth", "tokens_per_second"),
                               ("unsloth", "peak_reserved_gb")):
                base = reference.get((other, spec.get("repeat"))) or reference.get((other, None))
                ratios.append(f"{run[key] / base[key]:.2f}x" if base and base.get(key) and run.get(key) else "")
            lines.append(
                f"| {name} | {_label(spec)} | {run['tokens_per_second']:,.0f} | {run.get('peak_reserved_gb', 0):.2f} | "
                f"{run.get('peak_allocated_gb', 0):.2f} | {run['load_seconds']:.0f} | {run['first_loss']:.4f} | "
                f"{run['last_loss']:.4f} | {run['parity_loss']:.4f} | " + " | ".join(ratios) + " |")
    longest = [run for run in results["runs"] if run.get("longest")]
    if longest:
        lines += ["", "Longest sequence that trains at batch 1 (one step; doubling from 2048, then one bisection):", "",
                  "| case | system | longest ok | first failed | peak reserved GB at the longest |",
                  "| --- | --- | ---: | ---: | ---: |"]
        for run in longest:
            info = run["longest"]
            at = info["tried"].get(str(info["longest_ok"]), {}) or info["tried"].get(info["longest_ok"], {})
            lines.append(f"| {run['spec']['shape']} {run['spec']['dtype']} cap {run['spec'].get('memory_cap_gb')} GiB | "
                         f"{run['spec']['system']} | {info['longest_ok']:,} | {info['first_failed'] or 'none tried'} | "
                         f"{at.get('peak_reserved_gb', 0):.2f} |")
    estimates = [run for run in results["runs"] if run["spec"]["system"] in ("ftlib", "plain") and "error" not in run
                 and run.get("peak_reserved_gb")]
    if estimates:
        lines += ["", "ftlib.estimate_memory against the measured peaks (the estimate's `pytorch_reserved_gb`, "
                  "i.e. without the CUDA context, which PyTorch does not count; plain runs estimated with "
                  "`float32_upcasting=True`; variable-length runs are estimated for full 2 x 2048 batches, "
                  "the worst case):", "",
                  "| case | estimate GB | measured reserved GB | error | measured allocated GB | error |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for run in estimates:
            estimate = estimate_for(run).pytorch_reserved_gb
            reserved, allocated = run["peak_reserved_gb"], run["peak_allocated_gb"]
            lines.append(f"| {run['spec']['name']} | {estimate:.2f} | {reserved:.2f} | "
                         f"{100 * (estimate - reserved) / reserved:+.0f}% | {allocated:.2f} | "
                         f"{100 * (estimate - allocated) / allocated:+.0f}% |")
    if results.get("not_run"):
        lines += ["", "Not run (out of time in this call): " + ", ".join(item["name"] for item in results["not_run"])]
    return lines


def write_report(result_files, readme):
    """Replace the results section of README.md with tables built from `result_files`."""
    lines = []
    for path in result_files:
        data = json.loads(Path(path).read_text())
        for results in data.get("calls", [data]):
            lines += tables(results) + [""]
    text = Path(readme).read_text() if Path(readme).is_file() else f"# Benchmarks\n\n{START}\n{END}\n"
    if START not in text:
        text += f"\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    Path(readme).write_text(head + START + "\n" + "\n".join(lines) + "\n" + END + tail)
