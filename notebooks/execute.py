"""Build each guide notebook's .ipynb from its source, run it top to bottom, and save it with its outputs.

    python notebooks/execute.py       # all eight
    python notebooks/execute.py 04    # only notebook 04 (several numbers or file names work too)

A notebook's source is notebooks/NN_name.py, a jupytext "percent" script: `# %%` starts a code cell and
`# %% [markdown]` a markdown cell. The NN_name.ipynb beside it is its executed copy, for Colab and for nbval
in CI: edit the .py, never the .ipynb, then run this script. The notebook metadata is the .py header's
`jupyter:` block (kernelspec, and anything added there, such as Colab's accelerator).
"""

import sys
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

HERE = Path(__file__).resolve().parent
SOURCES = sorted(HERE.glob("[0-9][0-9]_*.py"))
CELL_TIMEOUT = 900  # seconds; the longest training cell takes a few minutes on 2 CPU cores


def build(source):
    """The notebook of a percent script, without outputs: its cells, stable cell ids, its header's metadata."""
    notebook = jupytext.read(source)
    notebook.metadata.pop("jupytext", None)  # describes the .py file, not the notebook
    for index, cell in enumerate(notebook.cells):
        cell.id = f"cell-{source.name[:2]}-{index:02d}"  # stable ids: only what changed shows in a diff
    return notebook


def execute(source, timeout=CELL_TIMEOUT):
    """Run a source's notebook in a fresh kernel (working directory: notebooks/) and save it as .ipynb."""
    notebook = build(source)
    kernel = notebook.metadata.get("kernelspec", {}).get("name", "python3")
    client = NotebookClient(notebook, timeout=timeout, kernel_name=kernel,
                            record_timing=False,  # no timestamps in the saved copy: it changes only with its outputs
                            resources={"metadata": {"path": str(HERE)}})
    try:
        client.execute()
    finally:
        nbformat.write(notebook, source.with_suffix(".ipynb"))  # a failed run keeps its outputs up to the error


def main(arguments):
    wanted = [Path(argument).name[:2] for argument in arguments]  # "04", "04_model_parameters.py", a path
    sources = [source for source in SOURCES if not wanted or source.name[:2] in wanted]
    if not sources:
        sys.exit(f"no notebook source matches {arguments}; the sources are {[source.name for source in SOURCES]}")
    failed = []
    for source in sources:
        started = time.time()
        try:
            execute(source)
        except CellExecutionError as error:  # the others still run; the saved copy shows the error in place
            failed.append(source.with_suffix(".ipynb").name)
            print(f"FAILED {failed[-1]}: {error.ename}: {error.evalue}", flush=True)
            continue
        print(f"executed {source.with_suffix('.ipynb').name} in {time.time() - started:.0f} s", flush=True)
    if failed:
        sys.exit(f"{len(failed)} notebook(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
    main(sys.argv[1:])
