"""Notebook 04's panel in a real browser: JupyterLab on a local port, Debian's Chromium driven by Playwright.

The test runs notebook 04 up to its first training cell (the tiny model, three epochs), drags the
learning-rate slider with the mouse, raises the LoRA rank with the arrow keys, runs the cell that prints the
panel's values again and reads the new values there, then trains again: the live loss plot must appear and
redraw while it runs, and a cell typed in below must read back the learning rate the run used. Screenshots of
the panel before and after and of the finished plot are kept in outputs/test-artifacts/ (FTLIB_TEST_ARTIFACTS
overrides the folder) for CI to keep.

Needs Debian's Chromium (`apt-get install -y chromium`) and playwright (the dev extra); Playwright's own browser
download is not used. Where Chromium is missing the test is skipped, unless FTLIB_REQUIRE_BROWSER=1 (set by
.ci/run, which installs it) makes that a failure.
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("FTLIB_TEST_ARTIFACTS", ROOT / "outputs" / "test-artifacts"))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_REQUIRED = os.environ.get("FTLIB_REQUIRE_BROWSER") == "1"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]
TOKEN = "ftlib-browser-test"


def _panel_notebook(folder):
    """Notebook 04 from its source, cut after its first training cell (the one that reads the panel)."""
    sys.path.insert(0, str(ROOT / "notebooks"))
    from execute import build

    notebook = build(next((ROOT / "notebooks").glob("04_*.py")))
    end = next(index for index, cell in enumerate(notebook.cells)
               if cell.cell_type == "code" and "**panel.train_kwargs()" in cell.source)
    notebook.cells = notebook.cells[:end + 1]
    nbformat.write(notebook, folder / "04.ipynb")


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab server on a free local port serving the cut notebook; yields its base URL."""
    if not Path(CHROMIUM).exists():  # checked before the server starts
        message = "the browser test needs Debian's Chromium: apt-get install -y chromium"
        if BROWSER_REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    _panel_notebook(tmp_path)
    port = _free_port()
    environment = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "config"), OMP_NUM_THREADS="1")
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", f"--port={port}",
         "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={tmp_path}",
         f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}"],
        env=environment, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={TOKEN}", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, (tmp_path / "server.log").read_text()
                time.sleep(0.5)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def _slider(page, label):
    return page.locator(".widget-hslider").filter(has=page.locator(".widget-label", has_text=label))


def _printed(text, label):
    return re.search(rf"^\s*{re.escape(label)} = (\S+)", text, re.M).group(1)


@pytest.mark.slow
def test_moving_the_panel_in_a_browser_feeds_the_next_cells_and_the_live_plot(jupyterlab):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{jupyterlab}/lab/tree/04.ipynb?token={TOKEN}")
            page.get_by_text("| Idle").wait_for(timeout=120_000)  # the kernel is up
            cell = page.locator(".jp-CodeCell").filter(has_text="panel.describe()")  # the panel's next cell
            output = cell.locator(".jp-OutputArea")
            cell.locator(".jp-InputArea-editor").click()
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Run All Above Selected Cell", exact=True).click()
            page.locator(".widget-hslider").first.wait_for(timeout=180_000)  # the panel is shown
            _run_in_place(page, cell)
            output.get_by_text("learning rate =").wait_for(timeout=60_000)
            before = output.inner_text()
            training = page.locator(".jp-CodeCell").filter(has_text="**panel.train_kwargs()")
            learning_rate, rank = _slider(page, "learning rate"), _slider(page, "LoRA rank r")
            learning_rate.scroll_into_view_if_needed()
            page.screenshot(path=ARTIFACTS / "04_panel_before.png")

            handle = learning_rate.locator(".noUi-handle").bounding_box()  # drag it to the left with the mouse
            x, y = handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2
            page.mouse.move(x, y)
            page.mouse.down()
            page.mouse.move(x - 25, y, steps=5)
            page.mouse.up()
            rank.locator(".noUi-handle").focus()  # four steps up with the keyboard: 16 -> 20
            for _ in range(4):
                page.keyboard.press("ArrowRight")
            shown_rate = float(learning_rate.locator(".widget-readout").inner_text())

            _run_in_place(page, cell)
            page.wait_for_function(  # the old output is cleared first, then the new one printed
                "([element, old]) => element.innerText.includes('effective batch') && element.innerText !== old",
                arg=[output.element_handle(), before], timeout=60_000)
            after = output.inner_text()
            page.screenshot(path=ARTIFACTS / "04_panel_after.png")

            area = training.locator(".jp-OutputArea").element_handle()
            _run_in_place(page, training)
            new_plot = ("([area, old]) => { const image = area.querySelector('img'); "
                        "return image && image.getAttribute('src') !== old ? image.getAttribute('src') : false; }")
            first_plot = page.wait_for_function(  # the live plot appears ...
                new_plot, arg=[area, None], timeout=180_000).json_value()
            page.wait_for_function(new_plot, arg=[area, first_plot], timeout=120_000)  # ... and is redrawn
            page.get_by_text("| Idle").wait_for(timeout=300_000)
            training.scroll_into_view_if_needed()
            page.screenshot(path=ARTIFACTS / "04_live_plot.png")

            page.keyboard.press("Escape")  # a cell of our own below: what did the run use?
            page.keyboard.press("b")
            page.keyboard.press("Enter")
            page.keyboard.type('print("trained at learning rate", model.ftlib_training["learning_rate"])')
            page.keyboard.press("Control+Enter")
            readback = page.locator(".jp-CodeCell").filter(has_text="trained at learning rate").last
            readback.locator(".jp-OutputArea").get_by_text("trained at learning rate").wait_for(timeout=60_000)
            used = readback.locator(".jp-OutputArea").inner_text()
        finally:
            browser.close()

    assert _printed(before, "learning rate") == "2e-03" and _printed(before, "LoRA rank r") == "16"
    assert shown_rate < 2e-3  # the slider moved left
    assert float(_printed(after, "learning rate")) == float(f"{shown_rate:.0e}")  # the cell read what the slider shows
    assert _printed(after, "LoRA rank r") == "20"
    assert float(used.split()[-1]) == pytest.approx(shown_rate, rel=0.02)  # and the run trained at that rate
    assert (ARTIFACTS / "04_panel_after.png").stat().st_size > 10_000
    assert (ARTIFACTS / "04_live_plot.png").stat().st_size > 10_000


def _run_in_place(page, cell):
    """Click into a cell's editor and run it where it is (Ctrl+Enter); returns the cell."""
    cell.scroll_into_view_if_needed()
    cell.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Control+Enter")
    return cell
