"""The notebooks run where a user opens them: a copy of the notebooks alone, in a folder outside the checkout,
executed in order with their default paths (only sizes are shrunk), as a user would run them one after another.

Configs such as ``configs/demo/stage1.yaml`` then come from the package, and everything written lands in that
folder: 01 prepares ``data/prepared/shapes`` there, 02 trains ``runs/demo/stage1`` on it, 03 evaluates that run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.notebooks.test_notebooks import NOTEBOOKS, workspace  # noqa: F401  (workspace: a fixture)
from workbench.notebook import read_results
from workbench.pipeline import KERNEL_LOG_LEVEL, KERNEL_NAME, notebook_errors

SIZES = {                      # shrink the work, never a path: every path parameter keeps its default
    "00_tour.ipynb": {"steps": 2, "limit": 16, "sample_steps": 2},
    "01_prepare_data.ipynb": {"limit": 48, "source_options": "{n: 48}", "preview": 4},
    "02_train_stage.ipynb": {"steps": 2, "overrides": "{sample_steps: 2, global_batch: 8, micro_batch: 8}"},
    "03_sample_and_evaluate.ipynb": {"samples_per_prompt": 1, "earlier_samples_per_prompt": 0, "eval_steps": 2,
                                     "fid_samples": 8},
    "04_masking_explorer.ipynb": {"quick": True, "live_budget": 0.2e12, "live_seeds": 1},
    "05_cost_model.ipynb": {},
    "06_ablations.ipynb": {},
}


def unescaped_dollars(path: Path) -> list[str]:
    """Rendered outputs (HTML, Markdown) with a bare ``$``: JupyterLab's MathJax would typeset what follows."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    return [text[:80] for cell in nb.cells for output in cell.get("outputs", [])
            for mime, text in output.get("data", {}).items()
            if mime in ("text/html", "text/markdown") and "$" in text]


def echoed_paths(path: Path) -> list[str]:
    """Cell results that are a bare ``PosixPath(...)`` (a cell ending in an expression that returns a path)."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    return [text[:80] for cell in nb.cells for output in cell.get("outputs", [])
            if output.get("output_type") == "execute_result"
            for text in [output.get("data", {}).get("text/plain", "")] if "Path(" in text]


@pytest.mark.slow
def test_every_notebook_runs_from_a_copy_outside_the_checkout(workspace, tmp_path):  # noqa: F811
    import papermill as pm

    mine = tmp_path / "my notebooks"              # not named notebooks/, no configs/ beside it, a space in the path
    mine.mkdir()
    for name in SIZES:
        shutil.copy(NOTEBOOKS / name, mine / name)
    for name in ["01_prepare_data.ipynb", "02_train_stage.ipynb", "03_sample_and_evaluate.ipynb",
                 "04_masking_explorer.ipynb", "05_cost_model.ipynb", "06_ablations.ipynb", "00_tour.ipynb"]:
        out = mine / f"out_{name}"
        pm.execute_notebook(str(mine / name), str(out), parameters={"threads": 1, **SIZES[name]},
                            kernel_name=KERNEL_NAME, progress_bar=False, cwd=str(mine),
                            extra_arguments=[KERNEL_LOG_LEVEL])
        assert notebook_errors(out) == [], name
        assert read_results(out), f"{name} recorded nothing"
        assert unescaped_dollars(out) == [], f"{name}: a $ in rendered output is typeset as maths by MathJax"
        assert echoed_paths(out) == [], f"{name}: a cell echoes a path object (end it with a statement)"
    assert (mine / "data" / "prepared" / "shapes" / "prepared.json").is_file()
    assert sorted(p.name for p in (mine / "runs" / "demo" / "stage1" / "checkpoints").iterdir())
    assert (mine / "runs" / "demo" / "stage1" / "eval" / "scores.json").is_file()


def test_a_missing_prepared_set_says_to_run_notebook_01_first(tmp_path, monkeypatch):
    from workbench.data.prepared_format import PreparedInfo

    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"run notebooks/01_prepare_data.ipynb from the same folder"):
        PreparedInfo.read("data/prepared/shapes")


def test_a_shipped_config_is_found_from_any_folder_and_a_missing_one_names_the_folders(tmp_path, monkeypatch):
    from workbench.config import configs_dir, find_config_file
    from workbench.train import Stage

    monkeypatch.chdir(tmp_path)
    assert find_config_file("configs/demo/stage1.yaml") == configs_dir() / "demo" / "stage1.yaml"
    assert Stage.from_yaml("configs/demo/stage1.yaml").resolution == 16
    (tmp_path / "configs" / "demo").mkdir(parents=True)                 # the working folder's own copy wins
    (tmp_path / "configs" / "demo" / "stage1.yaml").write_text("steps: 7\n")
    assert Stage.from_yaml("configs/demo/stage1.yaml").steps == 7
    with pytest.raises(FileNotFoundError, match=rf"looked in {tmp_path} and {configs_dir()}"):
        Stage.from_yaml("configs/demo/stage9.yaml")


def test_auto_workdir_is_the_checkout_root_from_notebooks_and_the_notebook_folder_elsewhere(tmp_path, monkeypatch):
    from workbench import notebook

    checkout = tmp_path / "repo"
    (checkout / "notebooks").mkdir(parents=True)
    (checkout / "configs").mkdir()
    elsewhere = tmp_path / "copies" / "notebooks"                        # named notebooks/, but no configs/ beside it
    elsewhere.mkdir(parents=True)
    for start, expected in ((checkout / "notebooks", checkout), (elsewhere, elsewhere)):
        monkeypatch.chdir(start)
        monkeypatch.setattr(notebook, "_START_DIR", None)
        assert notebook.notebook_setup("auto") == expected and Path.cwd() == expected


@pytest.mark.parametrize("name", list(SIZES))
def test_markdown_cells_escape_every_dollar(name):
    import re

    import nbformat

    nb = nbformat.read(str(NOTEBOOKS / name), as_version=4)
    bare = [c.source[:60] for c in nb.cells if c.cell_type == "markdown" and re.search(r"(?<!\\)\$", c.source)]
    assert bare == [], f"{name}: write \\$ in Markdown, or MathJax typesets the text after it as maths"
