"""The package as a user installs it: every subpackage and shipped file in the wheel, and the pipeline running
from a fresh venv outside the checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from workbench.kernel import KERNEL_SPEC

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_for_the_build():
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "workbench").rglob("__init__.py")}
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"


def test_the_kernel_spec_in_code_is_the_repositorys_kernel_json():
    assert json.loads((ROOT / "kernels" / "workbench" / "kernel.json").read_text()) == KERNEL_SPEC


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(out), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [whl] = out.glob("*.whl")
    return whl


@pytest.mark.slow
def test_the_wheel_ships_the_notebooks_configs_and_weights(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for notebook in (ROOT / "notebooks").glob("*.ipynb"):
        assert f"workbench/templates/{notebook.name}" in names
    for config in (ROOT / "configs").glob("*/*.yaml"):
        assert f"workbench/configs/{config.parent.name}/{config.name}" in names
    for results in (ROOT / "docs" / "ablations").glob("*/results.json"):
        assert f"workbench/ablations/{results.parent.name}/results.json" in names
    for asset in (ROOT / "workbench" / "assets").rglob("*"):
        if asset.is_file():
            assert f"workbench/assets/{asset.relative_to(ROOT / 'workbench' / 'assets').as_posix()}" in names


@pytest.mark.slow
def test_a_wheel_in_a_fresh_venv_runs_the_shipped_pipeline_outside_the_checkout(wheel, tmp_path):
    """A new venv gets the wheel (its dependencies come from this test venv's site-packages, so no download),
    installs its own kernel, and runs ``workbench pipeline --config demo`` with 2 steps per stage from a folder
    that is not the checkout."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ours = next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
    Path(site, "dependencies.pth").write_text(ours + "\n")          # torch & co. without a download
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", TQDM_DISABLE="1", JUPYTER_DATA_DIR=str(tmp_path / "jupyter"),
               PATH=f"{venv / 'bin'}:{env.get('PATH', '')}")

    def run(*args, **kw):
        return subprocess.run(args, capture_output=True, text=True, env=env, **kw)

    installed = run(str(python), "-m", "pip", "install", "--no-deps", "-q", str(wheel), timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]
    where = run(str(python), "-c", "import workbench, sys; print(workbench.__file__)", cwd=tmp_path)
    assert where.stdout.startswith(site), f"workbench came from {where.stdout!r}, not the wheel"
    assert run(str(venv / "bin" / "workbench"), "kernel", "install", cwd=tmp_path).returncode == 0
    work = tmp_path / "elsewhere"
    work.mkdir()
    sets = ["prepare.limit=16", "prepare.source_options={n: 16}", "overrides.steps=2", "overrides.checkpoint_every=0",
            "overrides.sample_steps=2", "overrides.global_batch=4", "overrides.micro_batch=4",
            "overrides.model_overrides={depth: 2, width: 64, mixer_width: 64}",
            "stage_overrides.stage3.model_overrides={depth: 2, width: 64, mixer_width: 64, pos_interp_scale: 2.0, "
            "sample_size: 32}",
            "stage_overrides.stage4.model_overrides={depth: 2, width: 64, mixer_width: 64, pos_interp_scale: 2.0, "
            "sample_size: 32}",
            "evaluate.samples_per_prompt=1", "evaluate.earlier_samples_per_prompt=0", "evaluate.eval_steps=2",
            "evaluate.fid_samples=4", "threads=1"]
    args = [str(venv / "bin" / "workbench"), "pipeline", "--config", "demo", "--quiet"]
    for pair in sets:
        args += ["--set", pair]
    proc = run(*args, cwd=work, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "6 step(s) run" in proc.stdout
    assert (work / "runs" / "demo" / "report.html").is_file()
    assert (work / "runs" / "demo" / "stage4" / "eval" / "scores.json").is_file()
