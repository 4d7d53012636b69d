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
