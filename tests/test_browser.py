"""A real JupyterLab in headless Chromium: open lesson 02, Run All Cells from the Run menu, move
a widget slider and check that the plot changes and appears once; screenshot the widget and a
diagram into build/screenshots/.

Needs Debian's Chromium at /usr/bin/chromium (`apt-get install -y chromium`) and the Python
Playwright package (never `playwright install`). The server, the browser and every setting they
write live in pytest's temporary folder; the notebook runs in fast mode (`MLCOURSE_FAST=1`).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from chromium import CHROMIUM, CHROMIUM_ARGS, require_chromium

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "02_maml.ipynb"
SERVER_START_S = 90
KERNEL_READY_MS = 120_000
RUN_ALL_MS = 420_000  # fast mode takes well under a minute on an idle CPU; CI machines are shared
WIDGET_REDRAW_MS = 60_000
SHOTS = ROOT / "build" / "screenshots"  # kept after the test (git-ignored), for reviewers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _isolated_env(home: Path) -> dict[str, str]:
    """Points every config, cache and runtime folder at ``home`` and turns on fast mode."""
    env = dict(os.environ, MLCOURSE_FAST="1", PYTHONUNBUFFERED="1")
    for var, sub in [
        ("XDG_CONFIG_HOME", "config"),
        ("XDG_CACHE_HOME", "cache"),
        ("XDG_DATA_HOME", "data"),
        ("MPLCONFIGDIR", "matplotlib"),
        ("IPYTHONDIR", "ipython"),
        ("JUPYTER_CONFIG_DIR", "jupyter-config"),
        ("JUPYTER_DATA_DIR", "jupyter-data"),
        ("JUPYTER_RUNTIME_DIR", "jupyter-runtime"),
    ]:
        (home / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(home / sub)
    env.pop("MLCOURSE_RESULTS", None)
    return env


def _write_settings(settings: Path) -> None:
    """Renders every cell (no windowing), so that locators find cells scrolled out of view."""
    path = settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"windowingMode": "none"}))


def _start_lab(tmp_path: Path, port: int, token: str) -> tuple[subprocess.Popen, Path]:
    root, home = tmp_path / "lab", tmp_path / "home"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)  # JupyterLab autosaves what it opens
    settings, workspaces = home / "lab-settings", home / "lab-workspaces"
    _write_settings(settings)
    workspaces.mkdir(parents=True)
    cmd = [
        sys.executable, "-m", "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        f"--LabApp.user_settings_dir={settings}",
        f"--LabApp.workspaces_dir={workspaces}",
    ]  # fmt: skip
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = tmp_path / "jupyterlab.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            cmd,
            cwd=root,
            env=_isolated_env(home),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its kernels share its process group
        )
    return server, log


def _wait_for_server(server: subprocess.Popen, port: int, token: str, log: Path) -> None:
    url = f"http://127.0.0.1:{port}/api/status?token={token}"
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"JupyterLab exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"JupyterLab did not answer within {SERVER_START_S} s:\n{log.read_text()[-3000:]}")


def _stop(server: subprocess.Popen) -> None:
    """Stops the server by its PID (it shuts its kernels down), then its group if it hangs."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)


def _run_all_cells(page) -> None:
    page.locator(".lm-MenuBar-itemLabel").filter(has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-item:visible").filter(has_text="Run All Cells").first.click()


def _wait_until_all_ran(page) -> None:
    """Every code cell has an execution count (none pending as ``[*]``)."""
    page.wait_for_function(
        """() => {
            const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
            return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
        }""",
        timeout=RUN_ALL_MS,
    )


@pytest.mark.slow
def test_lesson_02_runs_in_jupyterlab_and_its_slider_redraws(tmp_path):
    require_chromium()
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=60_000)
    port, token = _free_port(), secrets.token_hex(16)
    server, log = _start_lab(tmp_path, port, token)
    try:
        _wait_for_server(server, port, token, log)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(f"http://127.0.0.1:{port}/lab/tree/{NOTEBOOK.name}?token={token}")
                status = page.locator("#jp-main-statusbar .jp-StatusBar-TextItem")
                expect(status.filter(has_text="| Idle")).to_have_count(1, timeout=KERNEL_READY_MS)

                _run_all_cells(page)
                _wait_until_all_ran(page)
                errors = page.locator('[data-mime-type="application/vnd.jupyter.error"]')
                if errors.count():
                    page.screenshot(path=str(tmp_path / "error.png"), full_page=True)
                    pytest.fail(f"a cell raised:\n{errors.first.inner_text()[-2000:]}")

                box = page.locator(".widget-vbox").filter(has=page.locator(".widget-slider"))
                expect(box.first).to_be_visible()
                slider, image = box.first.locator(".widget-slider").first, box.first.locator("img")
                before = image.first.get_attribute("src")
                assert before, "the widget's plot image has no src"
                readout = slider.locator(".widget-readout")
                start = readout.inner_text()

                slider.locator(".noUi-handle").first.focus()
                page.keyboard.press("ArrowRight")
                expect(readout).not_to_have_text(start)
                expect(image.first).not_to_have_attribute("src", before, timeout=WIDGET_REDRAW_MS)

                # one figure in a live kernel: the widget's, not also a static copy above it
                code_cell = "contains(concat(' ', normalize-space(@class), ' '), ' jp-CodeCell ')"
                cell = box.first.locator(f"xpath=ancestor::div[{code_cell}][1]")
                expect(cell.locator(".jp-OutputArea img")).to_have_count(1)
                box.first.scroll_into_view_if_needed()
                SHOTS.mkdir(parents=True, exist_ok=True)
                shot = SHOTS / "02_maml_widget.png"
                cell.screenshot(path=str(shot))
                assert shot.stat().st_size > 0

                diagram = page.locator(".jp-CodeCell").filter(has_text="diagrams.maml_graph()")
                picture = diagram.locator(".jp-OutputArea img").first
                picture.scroll_into_view_if_needed()
                assert picture.evaluate("img => img.naturalWidth") > 300, "the diagram did not load"
                picture.screenshot(path=str(SHOTS / "02_maml_diagram.png"))
                print(f"screenshots in {SHOTS}")
            finally:
                browser.close()
    finally:
        _stop(server)
