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
                              f"(needs ~") and " free" in message and "\n" not in message
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
                                             r"\(needs ~[\d.]+ [KM]B, 10.0 KB free"):
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
    assert str(friendly).startswith("no space left on the device writing a file in /tmp (needs ~5.0 MB,")
    assert write_failure(RuntimeError("a bug"), "a file", "/tmp") is None


def test_out_of_memory_in_a_step_names_the_batch_and_the_fix(make_stage, monkeypatch):
    stage = make_stage(steps=2, global_batch=8, micro_batch=8)
    trainer = Trainer(stage, progress=False)

    def oom():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(trainer, "_step", oom)
    with pytest.raises(WorkbenchError) as caught:
        trainer.run()
    message = str(caught.value)
    assert "out of GPU memory in a step of 8 samples (nano, 16 px, mask 0.5)" in message
    assert "--set micro_batch=4; accumulation keeps global_batch 8" in message and not trainer.running


def test_sizes_show_enough_digits_that_needed_and_free_differ():
    from workbench.errors import no_space, size_text

    assert [size_text(n) for n in (6_240_000, 5_910_000, 512_000, 1_300_000_000, 999)] == [
        "6.2 MB", "5.9 MB", "512 KB", "1.3 GB", "999 bytes"]
    message = str(no_space("checkpoint step_0000040", "/tmp", 6_240_000, free=5_910_000, keep_last=1))
    assert "needs ~6.2 MB, 5.9 MB free" in message and "keep fewer" not in message     # keep_last=1: no such advice
    assert "keep_last=2" in str(no_space("checkpoint", "/tmp", 6_240_000, free=5_910_000, keep_last=3))


def test_out_of_inodes_says_so_instead_of_quoting_free_megabytes(monkeypatch):
    from workbench import errors

    monkeypatch.setattr(errors, "free_inodes", lambda folder: 0)
    message = str(errors.no_space("checkpoint step_0000002", "/tmp", 6_000_000, free=50_000_000))
    assert "no free inodes (files) left" in message and "needs ~" not in message


def test_a_safetensors_error_for_a_full_disk_is_one_line(make_stage, monkeypatch):
    from safetensors import SafetensorError

    stage = make_stage(steps=1)
    trainer = Trainer(stage, progress=False)

    def fail(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    monkeypatch.setattr(save_module, "save_file", fail)
    with pytest.raises(WorkbenchError, match=r"^no space left on the device writing checkpoint step_0000001"):
        trainer.run()
    assert list(stage.checkpoint_dir.glob(".tmp-*")) == []


def test_a_full_disk_writing_metrics_names_the_file(make_stage, monkeypatch):
    from pathlib import Path

    stage = make_stage(steps=3)
    trainer = Trainer(stage, progress=False)
    real_open = Path.open

    def full(self, mode="r", *args, **kwargs):
        if self.name == "metrics.jsonl" and "a" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(self, mode, *args, **kwargs)
    monkeypatch.setattr(Path, "open", full)
    with pytest.raises(WorkbenchError, match=r"^no space left on the device writing metrics.jsonl in .*s1 \("):
        trainer.run()


@pytest.fixture
def small_filesystem(tmp_path):
    """``mount(size, inodes)``: a real tmpfs of that size under tmp_path (root and mount needed; else the test
    skips)."""
    import subprocess

    mounted = []

    def mount(size: str, inodes: int):
        target = tmp_path / f"fs{len(mounted)}"
        target.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},nr_inodes={inodes}", "tmpfs", str(target)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({proc.stderr.strip() or proc.returncode}); "
                        "the simulated-error tests above cover the code path")
        mounted.append(target)
        return target
    yield mount
    import subprocess as sp
    for target in mounted:
        sp.run(["umount", "-l", str(target)], capture_output=True)


def test_a_real_full_tmpfs_inside_safetensors_is_one_line_and_keeps_the_last_checkpoint(make_stage, monkeypatch,
                                                                                         small_filesystem):
    runs = small_filesystem("19m", 1000)          # a checkpoint is ~8.9 MB: the third fails in model.safetensors
    stage = make_stage(steps=4, runs_dir=str(runs), checkpoint_every=1, keep_last=4, ema_decay=0.9)
    trainer = Trainer(stage, progress=False)
    monkeypatch.setattr(save_module, "free_bytes", lambda folder: 10 ** 12)   # another writer filled it after the check
    with pytest.raises(WorkbenchError) as caught:
        trainer.run()
    message = str(caught.value)
    assert message.startswith("no space left on the device writing checkpoint step_0000003") and "\n" not in message
    assert type(caught.value.__cause__).__name__ == "SafetensorError"                # the real error, not a mock
    good = ckpt.list_checkpoints(stage.checkpoint_dir)
    assert good and all(ckpt.verify_checkpoint(p) == [] for p in good)              # what was written stays intact
    assert list(stage.checkpoint_dir.glob(".tmp-*")) == []


def test_a_real_tmpfs_out_of_inodes_says_inodes(make_stage, small_filesystem):
    runs = small_filesystem("50m", 16)
    stage = make_stage(steps=3, runs_dir=str(runs), checkpoint_every=1, keep_last=4)
    with pytest.raises(WorkbenchError, match="no free inodes"):
        trainer = Trainer(stage, progress=False)
        trainer.run()
