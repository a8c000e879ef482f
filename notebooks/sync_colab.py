"""Keep every notebook ready for Colab: the GPU accelerator metadata, an "Open in Colab" link and the setup cells.

    python notebooks/sync_colab.py          # write: every notebooks/NN_name.py, then its executed NN_name.ipynb
    python notebooks/sync_colab.py --check  # change nothing; list what is out of date (tests/test_colab.py runs it)

The repository's URL and branch live in one place, `[tool.ftlib]` in pyproject.toml; a fork changes them there
and runs this script. What it writes into each source (notebooks/NN_name.py):

- the header's `jupyter:` block: Colab's accelerator metadata (a T4 GPU), so Colab opens the notebook on a GPU;
- under the title, an "Open in Colab" badge linking to the notebook on that repository and branch;
- the "## Setup" cells copied from the first notebook (SETUP_FROM), with `REPOSITORY = "..."` set to the URL.

Then each executed copy (NN_name.ipynb) gets its source's cells and metadata while it keeps its outputs, so the
long notebooks need no re-run. That is sound only where no code that ran changed: markdown, metadata and the
setup cell (which prints "nothing to do" where ftlib is installed, as it is wherever the notebooks are executed).
A notebook whose other code cells differ from its executed copy is left alone and listed: run
`python notebooks/execute.py NN` for it.
"""

import re
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SOURCES = sorted(HERE.glob("[0-9][0-9]_*.py"))
SETUP_FROM = "01"  # the notebook whose setup cells every other notebook copies
ACCELERATOR = ["#   accelerator: GPU", "#   colab:", "#     gpuType: T4", "#     provenance: []"]
SETUP_START = "# %% [markdown]\n# ## Setup\n"
BADGE = re.compile(r"^#\n# \[!\[Open In Colab\]\(.*\n", re.M)  # the badge and the blank line above it
REPOSITORY_LINE = re.compile(r'^REPOSITORY = "[^"]*"', re.M)


def repository():
    """(URL, branch) from pyproject.toml's [tool.ftlib]."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ftlib"]
    return settings["repository"].rstrip("/"), settings["branch"]


def colab_link(source, url, branch):
    """The Colab address of a notebook's executed copy on GitHub (Colab opens notebooks from GitHub paths)."""
    github_path = url.removeprefix("https://github.com/")
    notebook = source.with_suffix(".ipynb").relative_to(ROOT).as_posix()
    return f"https://colab.research.google.com/github/{github_path}/blob/{branch}/{notebook}"


def _setup_section(text):
    start = text.index(SETUP_START)
    return start, text.index("# %% [markdown]", start + 1)


def _with_accelerator(text):
    """The header with Colab's accelerator lines right under `# jupyter:`, replacing any earlier ones."""
    header_end = text.index("\n# ---\n", 4)
    lines = text[:header_end].split("\n")
    kept, skipping = [], False
    for line in lines:
        if line.startswith(("#   accelerator:", "#   colab:")):
            skipping = line.startswith("#   colab:")
            continue
        if skipping and line.startswith("#     "):
            continue
        skipping = False
        kept.append(line)
    position = kept.index("# jupyter:") + 1
    return "\n".join(kept[:position] + ACCELERATOR + kept[position:]) + text[header_end:]


def _with_badge(text, link):
    """The title cell with the badge as the line after its title (`# # NN · Title`)."""
    text = BADGE.sub("", text)
    title = re.search(r"^# # .*\n", text, re.M)
    badge = f"#\n# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({link})\n"
    return text[:title.end()] + badge + text[title.end():]


def synced_source(source, setup, url, branch):
    """A source's text with the accelerator metadata, its badge and the shared setup cells."""
    text = source.read_text()
    start, end = _setup_section(text)
    text = text[:start] + setup + text[end:]
    return _with_badge(_with_accelerator(text), colab_link(source, url, branch))


def synced_notebook(source):
    """The executed copy with its source's cells and metadata and its own outputs, or None if code changed."""
    sys.path.insert(0, str(HERE))
    from execute import build

    expected = build(source)
    saved = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    if [cell.cell_type for cell in saved.cells] != [cell.cell_type for cell in expected.cells]:
        return None
    setup_code = next(index for index, cell in enumerate(expected.cells) if cell.cell_type == "code")
    for index, (old, new) in enumerate(zip(saved.cells, expected.cells)):
        if old.cell_type == "code" and old.source != new.source and index != setup_code:
            return None  # code that ran changed: only a re-run gives its true outputs
        old.source, old.metadata, old.id = new.source, new.metadata, new.id
    saved.metadata.update(expected.metadata)
    return saved


def sync(write=True):
    """Bring every source and executed copy in line (write=False: only look); returns what was or is out of date."""
    url, branch = repository()
    first = next(source for source in SOURCES if source.name.startswith(SETUP_FROM))
    start, end = _setup_section(first.read_text())
    setup = REPOSITORY_LINE.sub(f'REPOSITORY = "{url}"', first.read_text()[start:end])
    problems = []
    for source in SOURCES:
        text = synced_source(source, setup, url, branch)
        if text != source.read_text():
            problems.append(f"{source.name}: header, badge or setup cells {'updated' if write else 'out of date'}")
            if write:
                source.write_text(text)
        if not source.with_suffix(".ipynb").exists():
            continue
        notebook = synced_notebook(source) if write else None
        if write and notebook is None:
            problems.append(f"{source.name}: code cells differ from the executed copy: "
                            f"run python notebooks/execute.py {source.name[:2]}")
        elif notebook is not None:
            nbformat.write(notebook, source.with_suffix(".ipynb"))
    return problems


if __name__ == "__main__":
    check = "--check" in sys.argv[1:]
    found = sync(write=not check)
    print("\n".join(found) or "every notebook is in sync")
    sys.exit(1 if any("execute.py" in line or check for line in found) else 0)
