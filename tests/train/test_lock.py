"""One writer per stage folder: a second trainer fails at once naming the holder; a dead holder's lock is taken over."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.train.conftest import ROOT, worker_command, worker_env
from workbench.errors import WorkbenchError
from workbench.train import Trainer
from workbench.train.inference import load_for_sampling
from workbench.train.lock import StageLock, lock_path, read_holder


def wait_for_lines(path, n: int, proc, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (path.is_file() and len(path.read_text().splitlines()) >= n):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the worker did not start training"
        time.sleep(0.1)


@pytest.mark.slow
def test_a_second_writer_fails_at_once_naming_the_holder(make_stage, tmp_path):
    stage = make_stage(steps=100_000, checkpoint_every=5)
    worker = subprocess.Popen(worker_command(stage, tmp_path / "log", sleep=0.05), env=worker_env(), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_lines(tmp_path / "log" / "rank0.jsonl", 6, worker)
        metrics_before = (stage.stage_dir / "metrics.jsonl").read_text()
        with pytest.raises(WorkbenchError) as caught:
            Trainer(stage, progress=False)
        message = str(caught.value)
        assert f"{stage.stage_dir} is being trained by PID {worker.pid} on host {socket.gethostname()} since" in message
        assert "another run name" in message

        # the CLI says the same in one line, and exits 2 without touching the folder
        config = tmp_path / "stage.yaml"
        stage.to_yaml(config)
        cli = subprocess.run([sys.executable, "-m", "workbench", "train", "--config", str(config)], env=worker_env(),
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert cli.returncode == 2 and "Traceback" not in cli.stderr
        [line] = [line for line in cli.stderr.splitlines() if line.startswith("error: ")]
        assert f"{stage.stage_dir} is being trained by PID {worker.pid}" in line
        assert (stage.stage_dir / "metrics.jsonl").read_text().startswith(metrics_before)   # only the holder writes

        # readers never need the lock
        assert load_for_sampling(stage.stage_dir).model is not None
    finally:
        worker.kill()
        worker.wait()


@pytest.mark.slow
def test_a_dead_holders_lock_is_taken_over_with_a_line(make_stage, tmp_path, capsys):
    stage = make_stage(steps=2)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from workbench.train.lock import StageLock; "
        "StageLock.acquire(sys.argv[2]); print('locked', flush=True); time.sleep(600)"), str(ROOT),
        str(stage.stage_dir)], env=worker_env(), stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    assert read_holder(stage.stage_dir)["pid"] == holder.pid
    with pytest.raises(WorkbenchError, match=f"PID {holder.pid}"):
        Trainer(stage, progress=False)
    holder.send_signal(signal.SIGKILL)                  # killed: the OS drops its lock, its record stays
    holder.wait()
    capsys.readouterr()
    trainer = Trainer(stage, progress=False)
    assert f"took over the lock of PID {holder.pid} on host {socket.gethostname()}" in capsys.readouterr().out
    trainer.run()
    assert trainer.done and read_holder(stage.stage_dir)["pid"] == os.getpid()
    trainer.close()
    assert read_holder(stage.stage_dir) == {} and lock_path(stage.stage_dir).is_file()


def test_in_one_process_an_idle_trainers_lock_passes_on_a_running_ones_does_not(make_stage):
    stage = make_stage(steps=1000)
    first = Trainer(stage, progress=False, on_step=lambda t, m: time.sleep(0.02))
    first.run_in_background()
    try:
        with pytest.raises(WorkbenchError, match="another Trainer in this process"):
            Trainer(stage, progress=False)
    finally:
        first.stop()
    second = Trainer(stage, progress=False)              # the notebook re-ran its cell: the idle one lets go
    assert second.step_count == first.step_count
    second.close()
    third = Trainer(stage, progress=False)               # released: taken anew
    third.close()


def test_a_trainer_that_fails_to_build_holds_no_lock(make_stage):
    stage = make_stage(steps=1, init_from="/nonexistent/stage")
    with pytest.raises((FileNotFoundError, ValueError)):
        Trainer(stage, progress=False)
    lock = StageLock.acquire(stage.stage_dir)            # another process could take it: nothing is held
    lock.release()


def other_process_can_lock(stage_dir) -> bool:
    """Whether a separate process could take the stage's lock right now."""
    code = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
            "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')\n"
            "except BlockingIOError:\n    print('held')")
    out = subprocess.run([sys.executable, "-c", code, str(lock_path(stage_dir))], capture_output=True, text=True)
    return out.stdout.strip() == "free"


def test_trainers_of_one_process_share_the_lock_until_the_last_lets_go(make_stage, monkeypatch):
    import gc

    stage = make_stage(steps=2)
    first = Trainer(stage, progress=False)
    first.run()
    second = Trainer(stage, progress=False)             # a re-run notebook cell
    first.close()                                        # the old one letting go must not free the new one's
    assert not other_process_can_lock(stage.stage_dir)
    with pytest.raises(WorkbenchError, match="cannot resume"):
        Trainer(make_stage(steps=2, lr=5e-3), progress=False)    # a failed third one must not free it either
    assert not other_process_can_lock(stage.stage_dir)
    monkeypatch.chdir(stage.stage_dir.parent)            # notebooks change folders between cells
    del second
    gc.collect()                                         # the last owner is gone: the lock is free
    assert other_process_can_lock(stage.stage_dir) and read_holder(stage.stage_dir) == {}


def test_a_failed_lock_write_leaves_nothing_held(make_stage, monkeypatch):
    stage = make_stage(steps=1)

    def full(fd, length):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "ftruncate", full)
    with pytest.raises(OSError):
        StageLock.acquire(stage.stage_dir)
    monkeypatch.undo()
    assert other_process_can_lock(stage.stage_dir)
    StageLock.acquire(stage.stage_dir).release()
