"""Honest resumes: refused changes with their old and new values, applied ones logged, unusable checkpoints never
overwritten, a refused pickle named as such and skipped by ``--resume auto``."""

from __future__ import annotations

import hashlib
import json
import pickle

import pytest
import yaml

from workbench.errors import WorkbenchError
from workbench.train import Trainer
from workbench.train import checkpoint as ckpt
from workbench.train.resume import stage_changes


def rewrite_file(path, name: str, data: bytes) -> None:
    """Replace one file of a checkpoint and its checksum in the manifest, as an attacker (or another tool) would."""
    (path / name).write_bytes(data)
    manifest = json.loads((path / ckpt.MANIFEST).read_text())
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (path / ckpt.MANIFEST).write_text(json.dumps(manifest))


class Payload:
    """Unpickling this would run code: exactly what weights_only=True refuses."""

    def __reduce__(self):
        return (print, ("this ran while loading",))


def malicious_pickle() -> bytes:
    return pickle.dumps({"step": 2, "payload": Payload()})


def test_a_changed_lr_is_refused_with_old_and_new_values_and_nothing_is_rewritten(make_stage):
    stage = make_stage(steps=2, lr=1e-3)
    Trainer(stage, progress=False).run()
    record = (stage.stage_dir / "stage.yaml").read_text()
    with pytest.raises(WorkbenchError) as caught:
        Trainer(make_stage(steps=4, lr=3e-4, global_batch=4, micro_batch=4), progress=False)
    message = str(caught.value)
    assert "global_batch: 8 -> 4" in message and "lr: 0.001 -> 0.0003" in message and "steps" not in message
    assert "fresh=True (--fresh) or another run name" in message
    assert (stage.stage_dir / "stage.yaml").read_text() == record            # the record still tells the truth


def test_applicable_changes_are_applied_logged_and_recorded(make_stage, capsys):
    stage = make_stage(steps=2)
    Trainer(stage, progress=False).run()
    capsys.readouterr()
    longer = make_stage(steps=4, sample_every=2, log_every=2)
    trainer = Trainer(longer, progress=False)
    assert "applied on resume: log_every 1 -> 2, sample_every 0 -> 2, steps 2 -> 4" in capsys.readouterr().out
    trainer.run()
    assert trainer.done and (longer.stage_dir / "samples" / "step_0000004.png").is_file()
    saved = yaml.safe_load((longer.stage_dir / "stage.yaml").read_text())
    assert (saved["steps"], saved["sample_every"], saved["log_every"]) == (4, 2, 2)


def test_stage_changes_sorts_fields_and_ignores_where_the_run_lives():
    saved = {"lr": 1e-3, "steps": 10, "data": "data/a", "runs_dir": "runs", "betas": [0.9, 0.999], "mask_ratio": 0.75}
    current = {"lr": 1e-3, "steps": 20, "data": "/abs/data/a", "runs_dir": "/abs/runs", "betas": (0.9, 0.999),
               "mask_ratio": 0.5, "repa_weight": 0.0}
    applicable, refused = stage_changes(saved, current)
    assert applicable == [("steps", 10, 20)] and refused == [("mask_ratio", 0.75, 0.5)]


def test_all_checkpoints_unusable_stops_instead_of_restarting_over_them(make_stage):
    stage = make_stage(steps=4, checkpoint_every=2)
    Trainer(stage, progress=False).run()
    found = ckpt.list_checkpoints(stage.checkpoint_dir)
    assert [p.name for p in found] == ["step_0000002", "step_0000004"]
    for path in found:
        (path / ckpt.MODEL_FILE).write_bytes(b"garbage")
    before = {p.name: (p / ckpt.MODEL_FILE).read_bytes() for p in found}
    with pytest.warns(UserWarning, match="skipping unusable checkpoint"):
        with pytest.raises(WorkbenchError) as caught:
            Trainer(stage, progress=False)
    message = str(caught.value)
    assert f"every checkpoint in {stage.checkpoint_dir} is unusable" in message
    assert "step_0000002: " in message and "step_0000004: " in message and "--fresh" in message
    assert {p.name: (p / ckpt.MODEL_FILE).read_bytes() for p in found} == before      # nothing overwritten
    fresh = Trainer(stage, progress=False, fresh=True)                                  # on purpose
    assert fresh.step_count == 0 and ckpt.list_checkpoints(stage.checkpoint_dir) == []


def test_a_refused_pickle_is_named_and_resume_auto_falls_back_to_the_previous_checkpoint(make_stage, capsys):
    stage = make_stage(steps=4, checkpoint_every=2)
    Trainer(stage, progress=False).run()
    newest = ckpt.list_checkpoints(stage.checkpoint_dir)[-1]
    rewrite_file(newest, ckpt.STATE_FILE, malicious_pickle())                # checksums pass: only loading can tell
    assert ckpt.verify_checkpoint(newest) == []

    model = Trainer(make_stage(steps=4, name="other"), progress=False).raw_model
    with pytest.raises(ckpt.CheckpointError) as caught:
        ckpt.load_checkpoint(newest, model=model)
    assert str(caught.value) == (f"refused to unpickle {newest / ckpt.STATE_FILE}: it holds objects other than "
                                 f"tensors (possibly malicious); it was not loaded")
    assert "weights_only=False" not in str(caught.value) and caught.value.__cause__ is None

    with pytest.warns(UserWarning, match="refused to unpickle"):
        resumed = Trainer(stage, progress=False)
    assert resumed.step_count == 2 and resumed.resumed_from.endswith("step_0000002")
    assert "this ran while loading" not in capsys.readouterr().out


def test_the_cli_prints_a_refused_pickle_as_one_line(make_stage, capsys):
    from workbench.cli import main

    stage = make_stage(steps=2)
    Trainer(stage, progress=False).run()
    path = ckpt.list_checkpoints(stage.checkpoint_dir)[-1]
    rewrite_file(path, ckpt.STATE_FILE, malicious_pickle())
    config = stage.stage_dir.parent / "s.yaml"
    stage.to_yaml(config)
    capsys.readouterr()
    assert main(["train", "--config", str(config), "--resume", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"error: refused to unpickle {path / ckpt.STATE_FILE}: it holds objects other than tensors "
                           f"(possibly malicious); it was not loaded")


def test_resuming_on_other_data_with_the_same_row_count_is_refused_naming_both(make_stage, shapes_data, tmp_path):
    from workbench.data.prepare import prepare

    other = tmp_path / "other_shapes"            # same size and settings, other scenes (the val split)
    prepare(source="shapes", out=other, resolutions=(16, 32), limit=64, text_encoder_options={"trim_padding": True},
            progress=False, split="val")
    stage = make_stage(steps=2)
    Trainer(stage, progress=False).run()
    with pytest.raises(WorkbenchError) as caught:
        Trainer(make_stage(steps=4, data=str(other)), progress=False)
    message = str(caught.value)
    assert "on other training data" in message and str(shapes_data) in message and str(other) in message
    assert "init_from=" in message
    started = Trainer(make_stage(name="s2", steps=1, data=str(other), init_from=str(stage.stage_dir)), progress=False)
    assert started.step_count == 0 and started.init_info["path"].endswith("step_0000002")   # new data: a new stage


def test_a_rerun_of_a_finished_stage_makes_the_sample_grid_a_kill_left_out(make_stage):
    stage = make_stage(steps=2)
    Trainer(stage, progress=False).run()
    grid = stage.stage_dir / "samples" / "step_0000002.png"
    grid.unlink()                                # as when the process died between the checkpoint and the grid
    rerun = Trainer(stage, progress=False)
    rerun.run()
    assert grid.is_file() and rerun.step_count == 2
    assert [p.name for p in ckpt.list_checkpoints(stage.checkpoint_dir)] == ["step_0000002"]


def test_fewer_steps_than_a_finished_run_says_so_and_does_nothing(make_stage, capsys):
    stage = make_stage(steps=4)
    Trainer(stage, progress=False).run()
    record = (stage.stage_dir / "stage.yaml").read_text()
    capsys.readouterr()
    shorter = Trainer(make_stage(steps=3), progress=False)
    shorter.run()
    out = capsys.readouterr().out
    assert "t/s1: already at step 4, past steps=3: nothing to do" in out
    assert "resuming" not in out and "applied on resume" not in out
    assert shorter.step_count == 4 and (stage.stage_dir / "stage.yaml").read_text() == record
    assert [p.name for p in ckpt.list_checkpoints(stage.checkpoint_dir)] == ["step_0000004"]


def test_applied_changes_are_said_once_even_when_a_newer_checkpoint_is_refused(make_stage, capsys):
    stage = make_stage(steps=4, checkpoint_every=2)
    Trainer(stage, progress=False).run()
    rewrite_file(stage.checkpoint_dir / "step_0000004", ckpt.STATE_FILE, malicious_pickle())
    capsys.readouterr()
    trainer = Trainer(make_stage(steps=6, checkpoint_every=2), progress=False)
    assert trainer.step_count == 2
    assert capsys.readouterr().out.count("applied on resume") == 1


def test_a_truncated_final_checkpoint_survives_a_shorter_rerun(make_stage):
    stage = make_stage(steps=4, checkpoint_every=2, keep_last=2)
    Trainer(stage, progress=False).run()
    final = stage.checkpoint_dir / "step_0000004"
    weights = (final / ckpt.MODEL_FILE).read_bytes()
    with open(final / ckpt.OPTIMIZER_FILE, "r+b") as f:
        f.truncate(100)
    with pytest.warns(UserWarning, match="skipping unusable checkpoint .*step_0000004"):
        rerun = Trainer(make_stage(steps=3, checkpoint_every=2, keep_last=2), progress=False)
    rerun.run()                                   # resumes at 2, trains to 3, applies retention
    moved = stage.checkpoint_dir / "damaged" / "step_0000004"
    assert (moved / ckpt.MODEL_FILE).read_bytes() == weights            # the intact weights were kept
    assert [p.name for p in ckpt.list_checkpoints(stage.checkpoint_dir)] == ["step_0000002", "step_0000003"]


def test_the_cli_prints_warnings_as_one_line_without_source_lines(make_stage, tmp_path):
    import subprocess
    import sys

    from tests.train.conftest import ROOT, worker_env

    stage = make_stage(steps=4, checkpoint_every=2)
    Trainer(stage, progress=False).run()
    with open(stage.checkpoint_dir / "step_0000004" / ckpt.OPTIMIZER_FILE, "r+b") as f:
        f.truncate(100)
    config = tmp_path / "stage.yaml"
    make_stage(steps=4, checkpoint_every=2).to_yaml(config)
    proc = subprocess.run([sys.executable, "-m", "workbench", "train", "--config", str(config)], env=worker_env(),
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    [line] = [line for line in proc.stderr.splitlines() if "skipping unusable checkpoint" in line]
    assert line.startswith("warning: skipping unusable checkpoint") and "UserWarning" not in proc.stderr
    assert "warnings.warn(" not in proc.stderr
