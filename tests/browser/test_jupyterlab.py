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
import contextlib
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


def needs_a_browser() -> None:
    """Skip (with the reason) without Debian's chromium or Playwright."""
    if not CHROMIUM.exists():
        pytest.skip(f"browser test skipped: {CHROMIUM} not found. Install Debian's chromium "
                    "(apt-get install -y chromium) to run JupyterLab in a real browser")
    pytest.importorskip("playwright.sync_api", reason="browser test skipped: playwright is not installed "
                                                      "(pip install -e '.[dev]')")
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    from workbench.kernel import install_kernel

    try:
        KernelSpecManager().get_kernel_spec("workbench")
    except NoSuchKernel:
        install_kernel()


def parameterise(name: str, root: Path, **parameters) -> None:
    """Copy notebook ``name`` into ``root`` with a papermill parameters cell (nothing executed)."""
    import papermill as pm

    pm.execute_notebook(str(ROOT / "notebooks" / name), str(root / name), prepare_only=True,
                        kernel_name="workbench", progress_bar=False, parameters={"threads": 1, **parameters})


@contextlib.contextmanager
def serve_lab(root: Path, tmp_path: Path):
    """JupyterLab serving ``root`` on a free port with a random token and its own settings; yields its base URL
    and token."""
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
        yield base, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def lab(tmp_path):
    """JupyterLab serving a scratch folder holding the parameterised tour; yields (base URL, token, root)."""
    needs_a_browser()
    root = tmp_path / "lab"
    root.mkdir()
    parameterise("00_tour.ipynb", root, workdir=str(root), steps=3, data=str(tmp_path / "tour_data"), limit=32,
                 resolution=16, runs_dir=str(tmp_path / "runs"), sample_steps=12)
    with serve_lab(root, tmp_path) as (base, token):
        yield base, token, root


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


def run_all_cells(page, timeout_s: float = RUN_TIMEOUT_S) -> None:
    """*Run → Run All Cells*, then wait until every code cell has an execution count (none queued or running)."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    accept_kernel_dialog(page)
    wait_until_idle(page, timeout_s)


def wait_until_idle(page, timeout_s: float = RUN_TIMEOUT_S) -> None:
    """Wait until every code cell of the open notebook shows an execution count (none is ``[*]`` or ``[ ]``)."""
    page.wait_for_function(
        """() => {
            const shown = '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputPrompt';
            const prompts = [...document.querySelectorAll(shown)];
            return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
        }""", timeout=timeout_s * 1000, polling=1000)


def plotted_points(d: str | None) -> int:
    """The number of points of a plotly line trace from its SVG path (``M x,y L x,y ...``)."""
    return len(re.findall(r"[ML]", d or ""))


@contextlib.contextmanager
def slow_browser(page, rate: float = float(os.environ.get("WORKBENCH_TEST_CPU_THROTTLE", "6"))):
    """The page's JavaScript ``rate`` times slower (Chrome DevTools CPU throttling), as on a loaded 2-core
    machine: there a widget whose view needs seconds to initialise (anywidget gives up after 2 s) shows up empty."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("Emulation.setCPUThrottlingRate", {"rate": rate})
    try:
        yield
    finally:
        cdp.send("Emulation.setCPUThrottlingRate", {"rate": 1})


@contextlib.contextmanager
def competing_cpu_load(processes: int = int(os.environ.get("WORKBENCH_TEST_HOGS", "2"))):
    """Other jobs on the machine: ``processes`` processes spinning on the cores while the block runs."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        yield hogs
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def test_the_tour_runs_in_jupyterlab_with_live_widgets(lab):
    from playwright.sync_api import sync_playwright

    base, token, root = lab
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=["--no-sandbox", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        console: list[str] = []
        page.on("console", lambda message: console.append(message.text))
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

            with competing_cpu_load(), slow_browser(page):   # a first run on a busy machine
                run_all_cells(page)
                # the dashboard's loss curve has its points on this first run (not just empty axes)
                dashboard = page.locator(".jp-CodeCell", has_text=WIDGETS["training_dashboard"])
                line = dashboard.locator(".js-plotly-plot .scatterlayer path.js-line").first
                assert not [m for m in console if "Failed to initialize" in m], console
                line.wait_for(state="attached", timeout=60_000)
                assert plotted_points(line.get_attribute("d")) == 3, line.get_attribute("d")   # steps = 3

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


def open_notebook(browser, base: str, token: str, name: str):
    """A new page with JupyterLab showing only notebook ``name`` (its own workspace), its kernel idle."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{base}/lab/workspaces/{Path(name).stem}/tree/{name}?token={token}", wait_until="domcontentloaded",
              timeout=120_000)
    page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for(timeout=120_000)
    accept_kernel_dialog(page)
    page.get_by_text(re.compile(r"MicroDiT Workbench \| Idle")).first.wait_for(timeout=120_000)
    return page


def assert_no_errors_and_no_maths(page, name: str) -> None:
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']")
    assert errors.count() == 0, f"{name}: a cell errored:\n{errors.first.inner_text()[:3000]}"
    maths = page.locator("mjx-container, .MathJax, .MathJax_Display")
    assert maths.count() == 0, f"{name}: text typeset as maths in: " + "; ".join(
        maths.evaluate_all("els => els.map(e => (e.closest('.jp-Cell') || e.parentElement).innerText.slice(0, 300))"))


@pytest.fixture
def lab_notebooks(tmp_path):
    """JupyterLab serving notebooks 02 (a stage long enough to watch), 04 (quick) and 05, sized for a test."""
    from workbench.data.prepare import prepare

    needs_a_browser()
    root = tmp_path / "lab"
    root.mkdir()
    data = tmp_path / "shapes16"
    prepare(source="shapes", out=data, resolutions=(16,), limit=32, text_encoder_options={"trim_padding": True},
            progress=False)
    parameterise("02_train_stage.ipynb", root, workdir=str(root), data=str(data), runs_dir=str(tmp_path / "runs"),
                 steps=100_000, print_every=1000,
                 overrides="{global_batch: 8, micro_batch: 8, log_every: 1, sample_every: 0, sample_steps: 2}")
    parameterise("04_masking_explorer.ipynb", root, workdir=str(root), quick=True, live_budget=0.2e12,
                 live_seeds=1, out=str(tmp_path / "live"))
    parameterise("05_cost_model.ipynb", root, workdir=str(root))
    with serve_lab(root, tmp_path) as (base, token):
        yield base, token, root


def test_notebooks_02_04_05_in_jupyterlab_stop_tells_the_truth(lab_notebooks):
    """02 trains with its live dashboard until Stop is clicked: the curve has points while it runs, the training
    cell prints the stop line and the summary cell the real step; 04 and 05 run clean. Screenshots of each."""
    from playwright.sync_api import sync_playwright

    base, token, _ = lab_notebooks
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = open_notebook(browser, base, token, "02_train_stage.ipynb")
            page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
            page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
            accept_kernel_dialog(page)
            dashboard = page.locator(".jp-CodeCell", has_text="display(TrainingDashboard(trainer))")
            line = dashboard.locator(".js-plotly-plot .scatterlayer path.js-line").first
            page.wait_for_function("""(el) => el && (el.getAttribute('d') || '').split('L').length > 5""",
                                   arg=line.element_handle(timeout=120_000), timeout=120_000, polling=500)
            # the live dashboard redraws while it trains, so Playwright's scroll (which waits for the element to stop
            # moving) can time out on a loaded machine; the DOM's own scroll does not wait
            dashboard.evaluate("el => el.scrollIntoView({block: 'center'})")
            page.screenshot(path=str(ARTIFACTS / "jupyterlab_02_training.png"))
            dashboard.get_by_role("button", name="Stop").click()
            wait_until_idle(page)
            assert_no_errors_and_no_maths(page, "02")
            trained = cell_output(page, "history = trainer.run()")
            step = int(re.search(r"stopped \(Stop button / trainer.stop\(\)\) at step (\d+); checkpoint", trained)[1])
            summary = "\n".join(page.locator(".jp-CodeCell", has_text="summary = stage_summary(stage.stage_dir)")
                                 .locator(".jp-OutputArea-output").all_inner_texts())
            assert f"step {step} of 100000; newest checkpoint" in summary and "step_" in summary, summary
            page.close()

            page = open_notebook(browser, base, token, "04_masking_explorer.ipynb")
            run_all_cells(page)
            assert_no_errors_and_no_maths(page, "04")
            assert page.locator(".jp-OutputArea-output table", has_text="not told apart from").count() >= 2
            assert page.locator(".jp-OutputArea-output table", has_text="mse_masked_kept").count() == 1
            page.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "jupyterlab_04_masking.png"), full_page=True)
            page.close()

            page = open_notebook(browser, base, token, "05_cost_model.ipynb")
            run_all_cells(page)
            assert_no_errors_and_no_maths(page, "05")
            assert page.locator(".js-plotly-plot").count() >= 2                 # cost against MFU, cost per stage
            page.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "jupyterlab_05_cost.png"))
            page.close()
        finally:
            browser.close()
    for name in ("02_training", "04_masking", "05_cost"):
        assert (ARTIFACTS / f"jupyterlab_{name}.png").stat().st_size > 10_000
