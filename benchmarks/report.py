"""benchmarks/README.md's tables, made from results.json, which keeps every call of run.py.

    python benchmarks/report.py                   # rewrite the README's tables from results.json
    python benchmarks/report.py --show -1         # every table of one call (0 = the first, -1 = the latest)
    python benchmarks/report.py --add other.json  # append the calls recorded in other files to results.json

The current results come from the complete calls (ftlib, plain and Unsloth each ran without an error, nothing
was left out for lack of time) of the latest date that has one: for each case, the latest such call. Each
switched-off option is read from the latest call that ran it beside ftlib's defaults. Ratios are taken within
one call (one machine), never across calls.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # ftlib from this checkout
RESULTS, README = HERE / "results.json", HERE / "README.md"
SYSTEMS = ("ftlib", "plain", "unsloth")
VARIANTS = ("checkpointing", "padding_free", "off", "compile", "form", "memory_budget_gb")  # what sets a run apart
# from a default


def load_calls(path=RESULTS):
    """The calls recorded in `path`: its "calls" list, or the one call a file holds. Example: `load_calls()[-1]`."""
    data = json.loads(Path(path).read_text())
    return data["calls"] if "calls" in data else [data]


def _case(spec):
    """The case a run belongs to, without the system: shape, method, mix, length, dtype, cap."""
    return (spec["shape"], spec["method"], spec["mix"], spec["length"], spec["dtype"], spec.get("memory_cap_gb"))


def _case_name(spec):
    name = f"{spec['shape']} {spec['method']} {spec['mix']} {spec['length']} {spec['dtype']}"
    return name + (f" cap {spec['memory_cap_gb']} GiB" if spec.get("memory_cap_gb") else "")


def _ok(run):
    return "error" not in run and run.get("tokens_per_second")


def _is_default(run):
    return _ok(run) and not any(run["spec"].get(key) not in (None, [], False) for key in VARIANTS) \
        and "checkpointing" not in run["spec"]


def _unprofiled_if_any(runs):
    """The runs without a profiled extra step, if there are any, else all: a profiled step is left out of the
    timing, but the profiler's start and stop may still slow the steps next to it."""
    return [run for run in runs if not run["spec"].get("profile")] or runs


def complete(call):
    """True when ftlib, plain and Unsloth all ran without an error and nothing was left out for time."""
    runs = call["runs"]
    return (not call.get("not_run") and all(_ok(run) for run in runs)
            and {run["spec"]["system"] for run in runs} >= set(SYSTEMS))


def _where(calls, call):
    """How the README names a call: its place in results.json, its date and its command's plan."""
    command = call["command"].split()
    plan = command[command.index("--plan") + 1] if "--plan" in command else "smoke"
    return f"call {calls.index(call)} ({call['date'][:10]}, `--plan {plan}`)"


def estimate_for(run):
    """ftlib.estimate_memory for the settings of one run: ftlib's configuration, or the plain recipe's upcasting."""
    from ftlib.speed.memory import estimate_memory

    spec = run["spec"]
    # the mode the run used; runs that did not record it had True unless the spec chose another
    checkpointing = run.get("checkpointing", spec.get("checkpointing", True))
    plan = run.get("memory_plan") or {}  # what train's memory budget chose, where add_lora left it "auto"
    layers = {key: plan[key] for key in ("recomputed_layers", "offloaded_layers") if key in plan}
    if checkpointing == "auto":
        checkpointing = bool(plan.get("recomputed_layers", True)) and "offload"
    return estimate_memory(spec["shape"], "qlora" if spec["method"] == "qlora" else "lora",
                           max_seq_length=plan.get("tokens_per_row", spec["length"]),
                           per_device_train_batch_size=spec["batch"], use_gradient_checkpointing=checkpointing,
                           float32_upcasting=spec["system"] == "plain", **layers)


def _ratio(value, base):
    return f"{value / base:.2f}x" if value and base else ""


def current_calls(calls):
    """[(call, its cases)]: the complete calls of the latest date with one, the latest call of each case."""
    finished = [call for call in calls if complete(call)]
    chosen, seen = [], set()
    for call in reversed(finished):
        if call["date"][:10] != finished[-1]["date"][:10]:
            break
        cases = {_case(run["spec"]) for run in call["runs"]} - seen
        if cases:
            chosen.insert(0, (call, cases))
            seen |= cases
    return chosen


def current_lines(calls):
    """The current results: the runs of the latest complete calls, with ratios, loss curves and the memory estimate."""
    chosen = current_calls(calls)
    if not chosen:
        return ["No complete call is recorded yet."]
    versions = {json.dumps(call["versions"], sort_keys=True) for call, _ in chosen}
    lines = [f"From {' and '.join(_where(calls, call) for call, _ in chosen)} of results.json, "
             f"on an {chosen[-1][0]['gpu']}:", ""]
    lines += [f"- command of call {calls.index(call)}: `{call['command']}`" for call, _ in chosen]
    for call, _ in chosen if len(versions) > 1 else chosen[-1:]:
        lines.append(("- versions: " if len(versions) == 1 else f"- versions of call {calls.index(call)}: ")
                     + ", ".join(f"{name} {version}" for name, version in call["versions"].items() if version))
    lines += ["", "| case | system | tokens/s | vs plain | vs Unsloth | peak reserved GB | vs Unsloth | estimate GB "
              "| loss first, last | loss gap to plain | parity loss |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for call, cases in chosen:
        for run in call["runs"]:
            spec = run["spec"]
            if _case(spec) in cases:
                lines.append(_current_row(call, run))
    return lines


def _current_row(call, run):
    spec = run["spec"]
    same_case = _unprofiled_if_any([other for other in call["runs"]
                                    if _case(other["spec"]) == _case(spec) and _is_default(other)])
    base = {}
    for other in same_case:  # each system's run of the same number, else its first
        key = other["spec"]["system"]
        if key not in base or other["spec"].get("repeat") == spec.get("repeat"):
            base[key] = other
    plain, unsloth = base.get("plain"), base.get("unsloth")
    gap = (f"{max(abs(a - b) for a, b in zip(run['losses'], plain['losses'])):.4f}"
           if plain and plain is not run and run.get("losses") else "")
    label = spec["system"] + (f" (run {spec['repeat']})" if spec.get("repeat") else "")
    reserved = run.get("peak_reserved_gb")
    estimate = f"{estimate_for(run).pytorch_reserved_gb:.2f}" if spec["system"] in ("ftlib", "plain") else ""
    return (f"| {_case_name(spec)} | {label} | {run['tokens_per_second']:,.0f} "
            f"| {_ratio(run['tokens_per_second'], plain and plain['tokens_per_second'])} "
            f"| {_ratio(run['tokens_per_second'], unsloth and unsloth['tokens_per_second'])} "
            f"| {reserved:.2f} | {_ratio(reserved, unsloth and unsloth.get('peak_reserved_gb'))} "
            f"| {estimate} | {run['first_loss']:.4f}, {run['last_loss']:.4f} | {gap} | {run['parity_loss']:.4f} |")


def longest_lines(calls):
    """For each system, the latest longest-sequence search on a free GPU's terms (float16 under a memory cap)."""
    lines = ["| system | longest that trained | first that failed | peak reserved GB there | from |",
             "| --- | ---: | ---: | ---: | --- |"]
    for system in SYSTEMS:
        found = [(call, run) for call in calls for run in call["runs"]
                 if run["spec"]["system"] == system and "error" not in run and run.get("longest")]
        if not found:
            lines.append(f"| {system} | not measured | | | |")
            continue
        call, run = found[-1]
        info = run["longest"]
        at = info["tried"].get(str(info["longest_ok"]), {})
        failed = f"{info['first_failed']:,}" if info["first_failed"] else "none tried"
        lines.append(f"| {system} | {info['longest_ok']:,} | {failed} | {at.get('peak_reserved_gb', 0):.2f} | "
                     f"{_case_name(run['spec'])}, {_where(calls, call)} |")
    return lines


def _switched_off(run, name, defaults):
    """True when `run` is ftlib with the option `name` switched off, and nothing else changed."""
    spec = run["spec"]
    if not _ok(run) or spec["system"] != "ftlib" or spec.get("compile") or spec.get("padding_free"):
        return False
    if spec.get("off") == [name] and "checkpointing" not in spec:
        return True
    # offload switched off is use_gradient_checkpointing=True, where the defaults offloaded
    return (name == "offload" and not spec.get("off") and spec.get("checkpointing") is True
            and all(default.get("checkpointing") == "offload" for default in defaults))


def switch_lines(calls):
    """Each option of ftlib/speed/switches.py switched off, from the latest call that ran it beside the defaults."""
    from ftlib.speed.switches import OPTIONS

    lines = ["| option | what it does | defaults, tokens/s | switched off | off / defaults | peak reserved GB, "
             "defaults and off | from |", "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for name, what in OPTIONS.items():
        row = f"| `{name}` | {what} | not measured | | | | |"
        for call in reversed(calls):
            for run in call["runs"]:
                defaults = _unprofiled_if_any([other for other in call["runs"] if other["spec"]["system"] == "ftlib"
                                               and _case(other["spec"]) == _case(run["spec"]) and _is_default(other)])
                if defaults and _switched_off(run, name, defaults):
                    off = _unprofiled_if_any([other for other in call["runs"] if _switched_off(other, name, defaults)
                                              and _case(other["spec"]) == _case(run["spec"])])
                    speed = [statistics.mean(r["tokens_per_second"] for r in group) for group in (defaults, off)]
                    memory = [statistics.mean(r.get("peak_reserved_gb", 0) for r in group) for group in (defaults, off)]
                    listed = ["; ".join(f"{r['tokens_per_second']:,.0f}" for r in group) for group in (defaults, off)]
                    row = (f"| `{name}` | {what} | {listed[0]} | {listed[1]} | {speed[1] / speed[0]:.2f}x "
                           f"| {memory[0]:.2f}, {memory[1]:.2f} | {_case_name(run['spec'])}, {_where(calls, call)} |")
                    break
            if "not measured" not in row:
                break
        lines.append(row)
    return lines


def _label(spec):
    extra = []
    if "checkpointing" in spec:
        extra.append(f"use_gradient_checkpointing={spec['checkpointing']!r}")
    if spec.get("memory_budget_gb"):
        extra.append(f"memory_budget_gb={spec['memory_budget_gb']}")
    if spec.get("padding_free"):
        extra.append("padding-free")
    extra += [f"{name} off" for name in spec.get("off", ())]
    if spec.get("compile"):
        extra.append("layers compiled")
    if spec.get("profile"):
        extra.append(f"profile {spec['profile']!r} of one more step")
    if spec.get("repeat"):
        extra.append(f"run {spec['repeat']}")
    return spec["system"] + (f" ({', '.join(extra)})" if extra else "")


def call_lines(call):
    """Every run of one call, as run.py recorded it (what --show prints)."""
    lines = [f"{call['date']}, {call['gpu']}: `{call['command']}`", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in call["versions"].items() if v), ""]
    if call.get("note"):
        lines += [f"Note: {call['note']}", ""]
    lines += ["| case | system | tokens/s | peak reserved GB | peak allocated GB | load s | first loss | last loss "
              "| parity loss | longest |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for run in call["runs"]:
        spec = run["spec"]
        if "error" in run:
            last = [line for line in run.get("log_tail", "").splitlines() if line.strip()][-1:]
            why = last[0][:90] if last else ""
            lines.append(f"| {_case_name(spec)} | {_label(spec)} | error: {run['error']} {why} | | | | | | | |")
            continue
        longest = f"{run['longest']['longest_ok']:,}" if run.get("longest") else ""
        lines.append(f"| {_case_name(spec)} | {_label(spec)} | {run['tokens_per_second']:,.0f} "
                     f"| {run.get('peak_reserved_gb', 0):.2f} | {run.get('peak_allocated_gb', 0):.2f} "
                     f"| {run['load_seconds']:.0f} | {run['first_loss']:.4f} | {run['last_loss']:.4f} "
                     f"| {run['parity_loss']:.4f} | {longest} |")
    if call.get("not_run"):
        lines += ["", "Not run (out of time): " + ", ".join(item["name"] for item in call["not_run"])]
    return lines


def replace_block(text, name, lines):
    """`text` with the lines between <!-- name:start --> and <!-- name:end --> replaced by `lines`."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text or end not in text:
        raise SystemExit(f"README.md has no {start} ... {end} block")
    head, rest = text.split(start, 1)
    return head + start + "\n" + "\n".join(lines) + "\n" + end + rest.split(end, 1)[1]


def write_readme(calls, readme=README):
    """Rewrite the README's generated blocks (current, longest, switches) from `calls`."""
    text = Path(readme).read_text()
    for name, lines in (("current", current_lines(calls)), ("longest", longest_lines(calls)),
                        ("switches", switch_lines(calls))):
        text = replace_block(text, name, lines)
    Path(readme).write_text(text)


def add_calls(paths, results=RESULTS):
    """Append the calls recorded in `paths` to `results`; returns how many."""
    data = json.loads(Path(results).read_text())
    added = [call for path in paths for call in load_calls(path)]
    data["calls"] += added
    Path(results).write_text(json.dumps(data, indent=1) + "\n")
    return len(added)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=str(RESULTS), help="the recorded calls (default: results.json)")
    parser.add_argument("--show", type=int, default=None, help="print every run of this call and stop")
    parser.add_argument("--add", nargs="+", default=None, help="append the calls of these files to --results first")
    args = parser.parse_args(argv)
    if args.add:
        print(f"added {add_calls(args.add, args.results)} calls to {args.results}")
    calls = load_calls(args.results)
    if args.show is not None:
        print("\n".join(call_lines(calls[args.show])))
        return 0
    write_readme(calls)
    return 0


if __name__ == "__main__":
    sys.exit(main())
