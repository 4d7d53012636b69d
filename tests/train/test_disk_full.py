"""A full, read-only or vanished output folder: one line that says what and how much, nothing half-written left,
the previous checkpoint intact, and a resume that works once space is free again.

The full disk is simulated in the writer: torch raises ENOSPC the way it does on a real full disk
(a RuntimeError whose cause is ``OSError(28)``), and ``free_bytes`` is patched for the pre-write check.
"""

from __future__ import annotations

import errno
import os

import pytest
import torch

from workbench.errors import WorkbenchError, write_failure
from workbench.train import Trainer
from workbench.train import checkpoint as ckpt
from workbench.train.checkpoint import save as save_module


def failing_torch_save(code: int):
    """``torch.save`` that fails like torch on a full disk: "enforce fail" with the OSError as its cause."""
    real = torch.save

    def save(obj, f, *args, **kwargs):
        try:
            raise OSError(code, os.strerror(code))
        except OSError as err:
            raise RuntimeError("[enforce fail at inline_container.cc:595] . unexpected pos 6912 vs 6840") from err
    return save, real


def test_a_full_disk_mid_checkpoint_is_one_line_leaves_nothing_and_resumes_after(make_stage, monkeypatch):
    stage = make_stage(steps=4, checkpoint_every=2)
    trainer = Trainer(stage, progress=False)
    trainer.run(steps=2)
    previous = ckpt.list_checkpoints(stage.checkpoint_dir)
    assert [p.name for p in previous] == ["step_0000002"]

    fail, _ = failing_torch_save(errno.ENOSPC)
    monkeypatch.setattr(save_module.torch, "save", fail)
    with pytest.raises(WorkbenchError) as caught:
        trainer.run()
    message = str(caught.value)
    assert message.startswith(f"no space left on the device writing checkpoint step_0000004 in {stage.checkpoint_dir} "
                              f"(needs ~") and " MB free)" in message and "\n" not in message
    assert caught.value.__cause__ is not None                  # kept for --debug; the message is the one line
    assert [p.name for p in stage.checkpoint_dir.iterdir()] == ["step_0000002"]       # no .tmp-* left behind
    assert ckpt.verify_checkpoint(previous[0]) == []
    trainer.close()

    monkeypatch.undo()                                   # space is free again
    resumed = Trainer(stage, progress=False)
    assert resumed.step_count == 2
    resumed.run()
    assert resumed.done and ckpt.is_final(ckpt.latest_valid_checkpoint(stage.checkpoint_dir))


def test_too_little_free_space_is_refused_before_writing(make_stage, monkeypatch):
    stage = make_stage(steps=2)
    trainer = Trainer(stage, progress=False)
    monkeypatch.setattr(save_module, "free_bytes", lambda folder: 10_000)
    with pytest.raises(WorkbenchError, match=r"no space left on the device writing checkpoint step_0000002 .* "
                                             r"\(needs ~\d+ MB, 0 MB free\)"):
        trainer.run()
    assert not stage.checkpoint_dir.exists() or list(stage.checkpoint_dir.iterdir()) == []


@pytest.mark.parametrize("code, says", [(errno.EROFS, "read-only file system"), (errno.EACCES, "permission denied"),
                                        (errno.ENOENT, "vanished")])
def test_read_only_forbidden_or_vanished_folders_say_so(make_stage, monkeypatch, code, says):
    stage = make_stage(steps=1)
    trainer = Trainer(stage, progress=False)
    fail, _ = failing_torch_save(code)
    monkeypatch.setattr(save_module.torch, "save", fail)
    with pytest.raises(WorkbenchError, match=says):
        trainer.run()
    assert [p for p in stage.checkpoint_dir.glob(".tmp-*")] == []


def test_stale_temp_folders_of_dead_writers_are_removed_when_a_trainer_starts(make_stage):
    stage = make_stage(steps=1)
    stage.checkpoint_dir.mkdir(parents=True)
    stale = stage.checkpoint_dir / ".tmp-step_0000001-999999-00ff"     # pid 999999: not running
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"x" * 1000)
    Trainer(stage, progress=False)
    assert not stale.exists()


def test_write_failure_finds_the_os_error_in_the_chain_and_ignores_other_errors():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("enforce fail") from inner
    except RuntimeError as outer:
        friendly = write_failure(outer, "a file", "/tmp", needed_bytes=5_000_000)
    assert str(friendly).startswith("no space left on the device writing a file in /tmp (needs ~5 MB,")
    assert write_failure(RuntimeError("a bug"), "a file", "/tmp") is None


def test_out_of_memory_in_a_step_names_the_batch_and_the_fix(make_stage, monkeypatch):
    stage = make_stage(steps=2, global_batch=8, micro_batch=8)
    trainer = Trainer(stage, progress=False)

    def oom():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(trainer, "step", oom)
    with pytest.raises(WorkbenchError) as caught:
        trainer.run()
    message = str(caught.value)
    assert "out of GPU memory in a step of 8 samples (nano, 16 px, mask 0.5)" in message
    assert "--set micro_batch=4; accumulation keeps global_batch 8" in message and not trainer.running
