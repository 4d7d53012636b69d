"""Ctrl-C during run(): the step ends, a checkpoint is written, one line is printed, nothing is raised.

Also the visible lines of a Trainer that finds an earlier run (resuming, or ``fresh=True`` starting over).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.train.conftest import worker_env
from workbench.train import Trainer
from workbench.train import checkpoint as ckpt
from workbench.train.interrupt import StopOnInterrupt

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_sigint_during_run_checkpoints_prints_one_line_and_returns(make_stage, capsys):
    before = signal.getsignal(signal.SIGINT)          # default_int_handler, or SIG_IGN under nohup / a CI runner
    stage = make_stage(steps=50)
    trainer = Trainer(stage, progress=False, on_step=lambda t, m: m["step"] == 3 and signal.raise_signal(signal.SIGINT))
    history = trainer.run()                                 # no KeyboardInterrupt escapes
    assert trainer.interrupted and trainer.step_count == 3 and len(history) == 3 and not trainer.running
    path = ckpt.latest_valid_checkpoint(stage.checkpoint_dir)
    assert path.name == "step_0000003" and ckpt.verify_checkpoint(path) == []
    lines = [line for line in capsys.readouterr().out.splitlines() if "interrupted" in line]
    assert lines == [f"interrupted at step 3; checkpoint {path}; resume with trainer.run() or the same command "
                     f"(it resumes automatically)"]
    assert signal.getsignal(signal.SIGINT) is before                        # the handler is put back

    trainer.callbacks["on_step"].clear()
    trainer.run()                                           # a later run trains on, and is not "interrupted"
    assert trainer.done and not trainer.interrupted


def test_a_second_sigint_raises_keyboard_interrupt():
    before = signal.getsignal(signal.SIGINT)
    stop = threading.Event()
    with pytest.raises(KeyboardInterrupt):
        with StopOnInterrupt(stop) as interrupt:
            signal.raise_signal(signal.SIGINT)
            assert interrupt.hit and stop.is_set()
            signal.raise_signal(signal.SIGINT)              # a hung step can still be broken out of
    assert signal.getsignal(signal.SIGINT) is before


def test_off_the_main_thread_it_changes_nothing():
    before = signal.getsignal(signal.SIGINT)
    seen = []

    def target():
        with StopOnInterrupt(threading.Event()) as interrupt:
            seen.append(interrupt._installed)
    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    assert seen == [False] and signal.getsignal(signal.SIGINT) is before


@pytest.mark.slow
def test_ctrl_c_in_workbench_train_checkpoints_and_exits_130_without_a_traceback(make_stage, tmp_path):
    stage = make_stage(steps=100_000, checkpoint_every=0)
    config = tmp_path / "stage.yaml"
    stage.to_yaml(config)
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "train", "--config", str(config)],
                            env=worker_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = stage.stage_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    [line] = [line for line in out.splitlines() if line.startswith("interrupted at step")]
    step = int(line.split()[3].rstrip(";"))
    path = ckpt.latest_valid_checkpoint(stage.checkpoint_dir)
    assert path.name == f"step_{step:07d}" and str(path) in line
    assert [json.loads(r)["step"] for r in metrics.read_text().splitlines()][-1] == step


def test_resuming_says_so_and_fresh_starts_over(make_stage, capsys):
    stage = make_stage(steps=2)
    Trainer(stage, progress=False).run()
    capsys.readouterr()

    longer = make_stage(steps=4)
    resumed = Trainer(longer, progress=False)
    assert resumed.step_count == 2 and resumed.resumed_from
    assert capsys.readouterr().out.splitlines() == [
        "t/s1: applied on resume: steps 2 -> 4",
        f"t/s1: resuming at step 2 of 4 from {resumed.resumed_from} (fresh=True or another run name starts over)"]

    fresh = Trainer(longer, progress=False, fresh=True)
    assert fresh.step_count == 0 and fresh.resumed_from is None and fresh.history == []
    assert capsys.readouterr().out.splitlines() == [
        f"t/s1: starting over (fresh=True removed the earlier run in {longer.stage_dir})"]
    metrics = longer.stage_dir / "metrics.jsonl"
    assert ckpt.list_checkpoints(longer.checkpoint_dir) == [] and (not metrics.exists() or metrics.read_text() == "")
    fresh.run()
    assert [r["step"] for r in fresh.history] == [1, 2, 3, 4]


def test_a_first_run_prints_nothing_about_resuming(make_stage, capsys):
    Trainer(make_stage(steps=1), progress=False)
    assert capsys.readouterr().out == ""
