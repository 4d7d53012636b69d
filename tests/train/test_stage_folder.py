"""A stage folder is the only place a stage writes or deletes: names that climb out are refused, ``fresh=True``
removes only what the workbench wrote, and no generated name can delete anything outside it."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.train.conftest import ROOT, worker_env
from workbench.errors import WorkbenchError
from workbench.io import remove_inside
from workbench.train import Stage, Trainer
from workbench.train import checkpoint as ckpt
from workbench.train.stage_folder import STAGE_OUTPUTS, clear_outputs


@pytest.mark.parametrize("field", ["name", "run"])
@pytest.mark.parametrize("value", ["..", ".", "a/b", "../x", "a\\b", ".hidden", "", "x\0y"])
def test_a_name_or_run_that_is_not_one_folder_name_is_refused(field, value):
    with pytest.raises(ValueError, match=rf"Stage\.{field}: expected one folder name"):
        Stage(**{field: value})


def test_fresh_with_name_dotdot_in_the_cli_deletes_nothing(make_stage, tmp_path):
    other = make_stage(run="x", name="keep", steps=1)
    Trainer(other, progress=False).run()
    config = tmp_path / "stage.yaml"
    make_stage(steps=2).to_yaml(config)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    proc = subprocess.run([sys.executable, "-m", "workbench", "train", "--config", str(config), "--set",
                           f"runs_dir={other.runs_dir}", "--set", "run=x", "--set", "name=..", "--fresh"],
                          env=worker_env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: Stage.name: expected one folder name")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before       # nothing deleted or written


def test_fresh_removes_only_what_the_workbench_wrote_and_says_what(make_stage, capsys):
    stage = make_stage(steps=2)
    Trainer(stage, progress=False).run()
    notes = stage.stage_dir / "notes.txt"
    notes.write_text("my observations")
    outside = stage.stage_dir.parent / "elsewhere"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    (stage.stage_dir / "samples").rename(stage.stage_dir / "samples_real")
    (stage.stage_dir / "samples").symlink_to(outside, target_is_directory=True)   # a symlink out of the folder
    capsys.readouterr()

    trainer = Trainer(stage, progress=False, fresh=True)
    line = capsys.readouterr().out.strip()
    assert line == (f"t/s1: starting over (fresh=True removed checkpoints, samples, metrics.jsonl, stage.yaml in "
                    f"{stage.stage_dir})")
    assert notes.read_text() == "my observations" and (stage.stage_dir / "samples_real").is_dir()
    assert (outside / "precious.txt").read_text() == "keep me"                    # the link went, not its target
    assert trainer.step_count == 0 and ckpt.list_checkpoints(stage.checkpoint_dir) == []


def test_remove_inside_refuses_a_path_outside_its_root(tmp_path):
    root, victim = tmp_path / "runs" / "r" / "s", tmp_path / "victim"
    root.mkdir(parents=True)
    victim.mkdir()
    for path in (victim, root / ".." / ".." / ".." / "victim", root, root.parent):
        with pytest.raises(WorkbenchError, match="refused to delete"):
            remove_inside(path, root)
    (root / "link").symlink_to(victim, target_is_directory=True)
    with pytest.raises(WorkbenchError, match="refused to delete"):
        remove_inside(root / "link" / "x", root)                                   # through a symlink: outside
    assert victim.is_dir()


NAMES = st.one_of(st.sampled_from(["..", ".", "/", "a/..", "..\\..", ".git", "~", "x/../..", "\0", " ", "stage1"]),
                  st.text(min_size=0, max_size=12))


@settings(max_examples=150, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=NAMES, run=NAMES)
def test_no_generated_name_or_run_writes_or_deletes_outside_the_stage_folder(tmp_path, name, run):
    base = Path(tempfile.mkdtemp(dir=tmp_path))
    runs, sentinel = base / "runs", base / "sentinel.txt"
    runs.mkdir(parents=True)
    sentinel.write_text("outside")
    (runs / "other").mkdir()
    (runs / "other" / "metrics.jsonl").write_text("{}")
    try:
        stage = Stage(name=name, run=run, runs_dir=str(runs))
    except ValueError as err:
        assert str(err).startswith("Stage."), err
        return
    folder = stage.stage_dir.resolve()
    assert folder.parent.parent == runs.resolve() and folder.name == name and folder.parent.name == run
    folder.mkdir(parents=True, exist_ok=True)
    for entry in STAGE_OUTPUTS:
        (folder / entry).write_text("x")
    clear_outputs(stage)
    assert sentinel.read_text() == "outside" and (runs / "other" / "metrics.jsonl").is_file()
    assert not any((folder / entry).exists() for entry in STAGE_OUTPUTS)
