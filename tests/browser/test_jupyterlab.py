"""A real browser: JupyterLab from this venv, 00_tour run cell by cell in headless Debian chromium (Playwright).

JupyterLab is started on 127.0.0.1 with a random token, a free port, and its own settings, workspace and
runtime folders. The tour notebook is parameterised for speed with papermill (``prepare_only``: the injected
parameters cell, nothing executed) into a scratch root folder, opened at ``/lab/tree/00_tour.ipynb``,
and run with *Run → Run All Cells*. The test checks that opening the notebook does not mark it modified,
that no cell errored, that the widgets' sliders and the training dashboard's plotly figure are in the DOM,
that the reference model's samples show a red object for "a red circle" (the evaluation's detector, as the
tour prints it), and that no Markdown or HTML output was typeset as maths. It saves a screenshot of the
page to ``test-artifacts/jupyterlab_00_tour.png`` and one of each widget to
``test-artifacts/widget_<name>.png``.

Without ``/usr/bin/chromium`` (``apt-get install chromium``) the test is skipped with that reason.
Playwright's own browser downloads are never used.
"""

from __future__ import annotations

import ast
import json
import os
import platform
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
SCREENSHOT = ARTIFACTS / "jupyterlab_00_tour.png"
RUN_TIMEOUT_S = 420                      # kernel start + the tiny tour on a busy 2-core machine

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer {url} within {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def lab(tmp_path):
    """JupyterLab serving a scratch folder holding the parameterised tour; yields (base URL, token, root)."""
    if not CHROMIUM.exists():
        pytest.skip(f"browser test skipped: {CHROMIUM} not found. Install Debian's chromium "
                    "(apt-get install -y chromium) to run JupyterLab in a real browser")
    pytest.importorskip("playwright.sync_api", reason="browser test skipped: playwright is not installed "
                                                      "(pip install -e '.[dev]')")
    import papermill as pm
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    from workbench.kernel import install_kernel

    try:
        KernelSpecManager().get_kernel_spec("workbench")
    except NoSuchKernel:
        install_kernel()

    root = tmp_path / "lab"
    root.mkdir()
    pm.execute_notebook(str(ROOT / "notebooks" / "00_tour.ipynb"), str(root / "00_tour.ipynb"), prepare_only=True,
                        kernel_name="workbench", progress_bar=False,
                        parameters={"workdir": str(root), "threads": 1, "steps": 3, "data": str(tmp_path / "tour_data"),
                                    "limit": 32, "resolution": 16, "runs_dir": str(tmp_path / "runs"),
                                    "sample_steps": 12})
    settings = tmp_path / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    # every cell in the DOM (no windowing), so the widgets' outputs can be found without scrolling
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    apputils = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    apputils.mkdir(parents=True)
    (apputils / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false",
                                                                          "checkForUpdates": False}))

    token, port = secrets.token_hex(16), free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1",
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    log = tmp_path / "jupyterlab.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--ServerApp.token={token}",
             f"--ServerApp.root_dir={root}", "--LabApp.news_url=None",
             f"--LabApp.user_settings_dir={tmp_path / 'settings'}",
             f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}"],
            cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(f"{base}/api/status?token={token}", proc, log)
        yield base, token, root
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def accept_kernel_dialog(page, wait_ms: int = 3000) -> None:
    """Accept JupyterLab's "Select Kernel" dialog (it preselects the notebook's kernel) if it shows up."""
    dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
    try:
        dialog.wait_for(timeout=wait_ms)
    except Exception:        # no dialog: the kernel was started without asking
        return
    dialog.locator(".jp-Dialog-button.jp-mod-accept").click()


# each widget of the tour, by a line of the cell that shows it
WIDGETS = {"mask_explorer": "explorer = MaskExplorer(", "training_dashboard": "dashboard = TrainingDashboard(",
           "sampler_panel": "panel = SamplerPanel("}


def cell_output(page, code: str) -> str:
    """The text of the output of the code cell whose source contains ``code``."""
    return page.locator(".jp-CodeCell", has_text=code).locator(".jp-OutputArea-output").last.inner_text()


def test_the_tour_runs_in_jupyterlab_with_live_widgets(lab):
    from playwright.sync_api import sync_playwright

    base, token, root = lab
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=["--no-sandbox", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"{base}/lab/tree/00_tour.ipynb?token={token}", wait_until="domcontentloaded", timeout=120_000)
            page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for(timeout=120_000)
            accept_kernel_dialog(page)
            # the notebook's own kernel (kernelspec "workbench") has started and is idle
            page.get_by_text(re.compile(r"MicroDiT Workbench \| Idle")).first.wait_for(timeout=120_000)
            page.wait_for_timeout(2000)
            stored = json.loads((root / "00_tour.ipynb").read_text())["metadata"]["language_info"]["version"]
            if stored == platform.python_version():     # another patch release of Python rewrites language_info
                assert page.locator(".jp-mod-dirty").count() == 0, "opening the notebook marked it modified"

            page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
            page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
            accept_kernel_dialog(page)

            # done when every code cell shows an execution count and none is queued or running ([*])
            page.wait_for_function(
                """() => {
                    const prompts = [...document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell .jp-InputPrompt')];
                    return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
                }""", timeout=RUN_TIMEOUT_S * 1000, polling=1000)

            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error'], "
                                  ".jp-RenderedText[data-mime-type='application/vnd.jupyter.stderr']")
            tracebacks = [t for t in errors.all_inner_texts() if "Traceback" in t or "Error" in t]
            assert not tracebacks, f"cells errored:\n{tracebacks[0][:3000]}"
            assert page.get_by_text("workbench-result").count() == 0           # the record is a table, not a dump
            assert page.locator(".jp-OutputArea-output table", has_text="final_loss").count() == 1   # the last cell
            assert page.locator("mjx-container, .MathJax, .MathJax_Display").count() == 0, "text typeset as maths"
            seen = ast.literal_eval(cell_output(page, "describe_detections(found)"))
            assert len(seen) == 4 and all("red" in s for s in seen), seen      # the reference model draws red objects

            sliders = page.locator(".jupyter-widgets.widget-slider, .widget-hslider")
            sliders.first.wait_for(timeout=60_000)
            plot = page.locator(".js-plotly-plot")
            plot.first.wait_for(timeout=60_000)
            assert sliders.count() >= 4                                       # mask ratio, σ, CFG, steps, batch
            assert plot.count() >= 2                                          # dashboard curves, loss per σ bin
            assert page.locator(".jp-OutputArea-output .jupyter-widgets img").count() >= 5   # explorer + panel views

            for name, code in WIDGETS.items():
                output = page.locator(".jp-CodeCell", has_text=code).locator(".jp-OutputArea-output").last
                output.scroll_into_view_if_needed()
                page.wait_for_timeout(500)
                output.screenshot(path=str(ARTIFACTS / f"widget_{name}.png"))
            plot.first.scroll_into_view_if_needed()
            page.wait_for_timeout(1000)
            page.screenshot(path=str(SCREENSHOT))
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "jupyterlab_00_tour_failure.png"))
            raise
        finally:
            browser.close()
    assert SCREENSHOT.stat().st_size > 10_000
    assert all((ARTIFACTS / f"widget_{name}.png").stat().st_size > 2_000 for name in WIDGETS)
