"""The notebooks: valid, parameterised, logic-free, and each one runs top to bottom through papermill.

Every notebook in ``notebooks/`` is executed with the ``workbench`` kernel and tiny parameters (a few
steps of a 2-block, 64-wide nano at 16 px on 32 shapes scenes); the values it records with
``workbench.pipeline.record`` are then checked in the output notebook.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import nbformat
import pytest
import yaml

from workbench.notebook import read_results
from workbench.pipeline import KERNEL_LOG_LEVEL, KERNEL_NAME, notebook_errors

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
EXPECTED = ["00_tour.ipynb", "01_prepare_data.ipynb", "02_train_stage.ipynb", "03_sample_and_evaluate.ipynb",
            "04_masking_explorer.ipynb", "05_cost_model.ipynb", "06_ablations.ipynb"]
TINY_MODEL = {"depth": 2, "width": 64, "mixer_width": 64, "sample_size": 16}
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


# ---------------------------------------------------------------------------------------------
#  Static checks (fast)
# ---------------------------------------------------------------------------------------------

def test_every_notebook_is_present_and_executed_by_a_test():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == EXPECTED
    executed = {name for name in EXPECTED if f"def test_{name[:2]}_" in Path(__file__).read_text()}
    assert executed == set(EXPECTED)


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_is_valid_v4_with_the_workbench_kernel_and_one_parameters_cell(name):
    nb = nbformat.read(str(NOTEBOOKS / name), as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata["kernelspec"]["name"] == KERNEL_NAME
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks without outputs"
    teaching = sum(len(c.source) for c in nb.cells if c.cell_type == "markdown")
    assert teaching > 600, "the markdown should teach the method"


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_is_stored_as_jupyterlab_saves_it(name):
    """Opening a notebook changes nothing: nbformat's layout, cell ids, and the kernel's full language_info
    (JupyterLab writes the kernel's language_info into the notebook when it differs, which marks it modified)."""
    from ipykernel.ipkernel import IPythonKernel

    text = (NOTEBOOKS / name).read_text()
    nb = nbformat.reads(text, as_version=4)
    assert text == nbformat.writes(nb) + "\n", "normalise with nbformat.write"
    assert nb.nbformat_minor == nbformat.current_nbformat_minor and all(c.get("id") for c in nb.cells)
    stored, kernel = dict(nb.metadata["language_info"]), dict(IPythonKernel.language_info)
    assert {k: v for k, v in stored.items() if k != "version"} == {k: v for k, v in kernel.items() if k != "version"}
    assert stored["version"].split(".")[:2] == kernel["version"].split(".")[:2]


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_code_has_no_logic_of_its_own(name):
    """Cells call the package: no function or class definitions, no loops, no imports beyond workbench/IPython."""
    nb = nbformat.read(str(NOTEBOOKS / name), as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tree = ast.parse(cell.source)
        for node in ast.walk(tree):
            assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda,
                                         ast.For, ast.While, ast.With)), f"{name}: logic in cell:\n{cell.source}"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                assert module.split(".")[0] in ("workbench", "IPython"), f"{name}: imports {module}"


def test_parameters_cells_declare_what_the_pipeline_passes():
    import papermill as pm

    declared = {name: set(pm.inspect_notebook(str(NOTEBOOKS / name))) for name in EXPECTED}
    assert all({"workdir", "threads"} <= d for d in declared.values())
    assert {"source", "codec", "text_encoder", "resolutions", "output", "limit"} <= declared["01_prepare_data.ipynb"]
    assert {"config", "overrides", "run", "runs_dir", "data", "init_from", "steps", "live"} <= \
        declared["02_train_stage.ipynb"]
    assert {"run_dir", "stages"} <= declared["03_sample_and_evaluate.ipynb"]
    assert "steps" in declared["00_tour.ipynb"]


# ---------------------------------------------------------------------------------------------
#  Execution (slow): papermill with the workbench kernel
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A scratch folder; the ``workbench`` kernel is installed into this venv when missing, and kernels get one
    torch thread."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    from workbench.kernel import install_kernel

    try:
        KernelSpecManager().get_kernel_spec(KERNEL_NAME)
    except NoSuchKernel:
        install_kernel()
    patch = pytest.MonkeyPatch()
    patch.setenv("OMP_NUM_THREADS", "1")       # the kernels inherit it: 1 thread is far faster on a busy 2-core box
    patch.setenv("TQDM_DISABLE", "1")
    yield tmp_path_factory.mktemp("notebooks")
    patch.undo()


def execute(name: str, out_dir: Path, **parameters) -> tuple[nbformat.NotebookNode, dict]:
    """Run ``notebooks/<name>`` with papermill; returns the output notebook and its last ``record``."""
    import papermill as pm

    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / name
    pm.execute_notebook(str(NOTEBOOKS / name), str(out), parameters={"workdir": str(ROOT), "threads": 1, **parameters},
                        kernel_name=KERNEL_NAME, progress_bar=False, cwd=str(ROOT), extra_arguments=[KERNEL_LOG_LEVEL])
    assert notebook_errors(out) == []
    results = read_results(out)
    assert results, f"{name} recorded nothing"
    return nbformat.read(str(out), as_version=4), results[-1]


def mimetypes(nb) -> list[str]:
    return [key for cell in nb.cells for output in cell.get("outputs", []) for key in output.get("data", {})]


def html_outputs(nb) -> str:
    return "".join(output.get("data", {}).get("text/html", "") for cell in nb.cells
                   for output in cell.get("outputs", []))


@pytest.fixture(scope="module")
def prepared(workspace):
    """01_prepare_data on 32 shapes scenes at 16 and 32 px; returns (output notebook, record, folder)."""
    out = workspace / "prepared"
    nb, result = execute("01_prepare_data.ipynb", workspace, source="shapes", resolutions="16,32", output=str(out),
                         limit=32, source_options="{n: 32}", preview=4)
    return nb, result, out


@pytest.fixture(scope="module")
def trained(workspace, prepared):
    """02_train_stage: 3 steps of a tiny stage from a YAML, overridden by parameters; live dashboard on."""
    config = workspace / "tiny_stage.yaml"
    config.write_text(yaml.safe_dump({
        "name": "stage1", "run": "yaml_run", "data": "data/none", "resolution": 16, "model": "nano",
        "model_overrides": TINY_MODEL, "mask_ratio": 0.5, "steps": 50, "global_batch": 8, "micro_batch": 8,
        "lr": 1.0e-3, "sigma_data": 0.5, "ema_decay": 0.9, "sample_steps": 2, "sample_cfg_scale": 2.0,
        "sample_prompts": ["a red circle", "a blue square"], "log_every": 1}))
    nb, result = execute("02_train_stage.ipynb", workspace / "out02", config=str(config), run="nb",
                         runs_dir=str(workspace / "runs"), data=str(prepared[2]), steps=3, lr=2e-3,
                         overrides='{"seed": 7}', live=True, print_every=1)
    return nb, result, workspace / "runs" / "nb"


@pytest.mark.slow
def test_00_tour_builds_masks_trains_and_samples(workspace):
    nb, result = execute("00_tour.ipynb", workspace, steps=2, data=str(workspace / "tour_data"), limit=16,
                         resolution=16, runs_dir=str(workspace / "runs"), sample_steps=2)
    assert result["step"] == 2
    assert all(isinstance(result[k], float) and result[k] > 0 for k in ("first_loss", "final_loss"))
    assert result["resumed_from"] is None                                    # fresh=True: the tour's own run
    assert result["patches"] == 64 and result["kept_patches"] == 16          # the reference model: 32 px, patch 4, 75 % masked
    assert result["samples_shape"] == [4, 32, 32, 3]                         # sampled from the reference model
    assert len(result["samples_seen"]) == 4 and all(isinstance(s, str) for s in result["samples_seen"])
    assert result["parameters"]["params"] > 1_000_000
    assert mimetypes(nb).count(WIDGET_VIEW) >= 3                              # explorer, dashboard, sampler panel
    assert (workspace / "runs" / "tour" / "tour" / "samples" / "step_0000002.png").is_file()


@pytest.mark.slow
def test_01_prepare_data_writes_the_dataset_and_shows_a_grid_and_the_report(prepared):
    nb, result, out = prepared
    assert result["written"] == 32 and result["seen"] == 32 and result["skipped"] == {}
    assert (out / "prepared.json").is_file()
    page = html_outputs(nb)
    assert "data:image/png;base64," in page                                  # the decoded sample grid
    assert "written" in page and "<table" in page                            # the report


@pytest.mark.slow
def test_02_train_stage_applies_parameters_trains_and_samples(trained):
    nb, result, run_dir = trained
    assert result["stage"] == "stage1" and result["run"] == "nb"
    assert result["step"] == 3 and result["steps"] == 3 and result["complete"] is True
    assert result["final_loss"] > 0
    stage = yaml.safe_load((run_dir / "stage1" / "stage.yaml").read_text())
    assert stage["lr"] == 2e-3 and stage["seed"] == 7 and stage["steps"] == 3
    assert Path(result["samples"]).is_file() and Path(result["checkpoint"]).is_dir()
    assert WIDGET_VIEW in mimetypes(nb)                                       # the live dashboard
    logs = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.get("name") == "stdout")
    assert "nb/stage1 step 3/3" in logs                                       # plain log lines
    assert "data:image/png;base64," in html_outputs(nb)                       # the final samples


@pytest.mark.slow
def test_03_sample_and_evaluate_compares_the_stages_of_a_run(workspace, trained):
    _, _, run_dir = trained
    nb, result = execute("03_sample_and_evaluate.ipynb", workspace / "out03", run_dir=str(run_dir),
                         samples_per_prompt=1, eval_steps=2, fid_samples=8)
    [summary] = result["summaries"]
    assert summary["stage"] == "stage1" and summary["step"] == 3 and summary["final_loss"] > 0
    scores = result["scores"]["stage1"]
    assert scores["samples"] == 55 and 0.0 <= scores["overall"] <= 1.0 and scores["fid_proxy"] > 0
    saved = json.loads((run_dir / "stage1" / "eval" / "scores.json").read_text())
    assert saved["protocol"]["samples_per_prompt"] == 1 and saved["protocol"]["steps"] == 2
    assert saved["compositional"]["overall"] == scores["overall"]
    assert saved["shape_probe"]["n"] == 96 and scores["shape_probe"] == saved["shape_probe"]["accuracy"]
    assert "application/vnd.plotly.v1+json" in mimetypes(nb)                  # loss curves
    page = html_outputs(nb)
    assert "data:image/png;base64," in page and "final_loss" in page and "H100-h" in page
    assert "single-object shape accuracy" in page and "FID-proxy" in page      # the score table
    assert "shape probe gap" in page
    assert "saw:" in page                                                      # the worst failures


@pytest.mark.slow
def test_04_masking_explorer_shows_the_equal_compute_comparison_and_a_live_rerun(tmp_path):
    nb, result = execute("04_masking_explorer.ipynb", tmp_path / "out04", quick=True, live_budget=0.2e12,
                         live_seeds=2, out=str(tmp_path / "live"))
    committed = {row["variant"]: row for row in result["committed"]}
    assert list(committed) == ["a_no_mask", "b_naive_75", "c_deferred_75"]
    assert all(row["seeds"] == 2 and " [" in row["val_loss"] for row in committed.values())
    assert [row["variant"] for row in result["live"]] == ["b_naive_75", "c_deferred_75"]
    assert result["live_rows"] == 2 * 2 and result["live_failures"] == 0       # 2 variants x 2 seeds, scored once
    for errors in result["errors"]:
        assert errors["patches"] == 64 and errors["kept_patches"] == 16
        assert all(errors[k] >= 0 for k in ("mse_unmasked", "mse_unmasked_kept", "mse_masked_kept"))
    assert mimetypes(nb).count(WIDGET_VIEW) >= 3                                   # two explorers and the table
    assert "not told apart from" in html_outputs(nb)

    # a rerun resumes: every run finished, so nothing trains again and the numbers are the same
    _, again = execute("04_masking_explorer.ipynb", tmp_path / "out04b", quick=True, live_budget=0.2e12,
                       live_seeds=2, out=str(tmp_path / "live"))
    assert again["live"] == result["live"]


@pytest.mark.slow
def test_05_cost_model_reproduces_the_paper_and_projects_the_demo(workspace):
    nb, result = execute("05_cost_model.ipynb", workspace / "out05")
    assert result["paper_dollars"] == pytest.approx(1890, abs=1)
    assert result["paper_gpu_hours"] == pytest.approx(499.2, abs=0.1)
    assert 0.05 < result["implied_mfu"] < 0.5
    assert result["unmasked_dollars"] > 1.5 * result["paper_dollars"]          # masking is the main saving
    assert result["mine_stages"] == ["stage1", "stage2", "stage3", "stage4"]
    assert 0 < result["mine_dollars"] < 1 and result["mine_flops"] > 0
    page = html_outputs(nb)
    assert "&#36;1,890" in page and not re.search(r"\$\d", page)     # no "$...$" for the math renderer
    markdown = "".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "\\$1,890" in markdown and not re.search(r"(?<!\\)\$\d", markdown)


@pytest.mark.slow
def test_06_ablations_plans_runs_and_draws_a_quick_suite(tmp_path):
    nb, results = execute("06_ablations.ipynb", tmp_path / "out", run=True, quick=True, budget=0.4e12, seeds=1,
                          checkpoints=2, out=str(tmp_path / "ablate"))
    assert results["variants"] == ["a_no_mask", "b_naive_75", "c_deferred_75", "d_small_unmasked", "e_deferred_50"]
    assert results["rows"] == 2 * 5 and results["failures"] == 0 and results["figures"] == 7   # 6 metrics, per σ
    assert (tmp_path / "ablate" / "results.json").is_file()
    assert "application/vnd.plotly.v1+json" in mimetypes(nb) or "text/html" in mimetypes(nb)

