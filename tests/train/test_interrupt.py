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
from types import SimpleNamespace

import pytest
import torch

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


def test_sigterm_during_run_checkpoints_like_ctrl_c_and_says_which_signal(make_stage, capsys):
    before = signal.getsignal(signal.SIGTERM)
    stage = make_stage(steps=50)
    trainer = Trainer(stage, progress=False,
                      on_step=lambda t, m: m["step"] == 3 and signal.raise_signal(signal.SIGTERM))
    trainer.run()                                               # the process is not killed
    assert trainer.interrupted and trainer.stop_signal == "SIGTERM" and trainer.step_count == 3
    path = ckpt.latest_valid_checkpoint(stage.checkpoint_dir)
    assert path.name == "step_0000003" and ckpt.verify_checkpoint(path) == []
    assert f"stopped by SIGTERM at step 3; checkpoint {path}; resume with" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_repeated_sigterm_is_ignored_while_stopping():
    stop = threading.Event()
    with StopOnInterrupt(stop) as interrupt:
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)                     # torchrun forwards the one its agent got
        assert interrupt.signal_name == "SIGTERM" and interrupt.exit_code == 143 and stop.is_set()


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
            seen.append(bool(interrupt._previous))
    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    assert seen == [False] and signal.getsignal(signal.SIGINT) is before


def test_a_signal_that_lands_after_the_ranks_agreed_waits_for_the_next_agreement():
    # A CI failure: rank 0's SIGTERM handler ran between the all-reduce (sum 0) and the return, so rank 0 stopped
    # while rank 1 went on into the next step's collectives, and both hung until the launcher's SIGKILL.
    stop = threading.Event()

    class TwoRanks:
        num_processes, device = 2, torch.device("cpu")

        def reduce(self, tensor, reduction):
            agreed = tensor.clone()          # the other rank had no stop request either
            stop.set()                       # this rank's signal arrives during the collective
            return agreed

    trainer = SimpleNamespace(accelerator=TwoRanks(), _stop=stop, step_count=5, read_every=1)
    assert Trainer._stop_agreed(trainer, target=10) is False        # what the other rank returns too
    assert Trainer._stop_agreed(trainer, target=10) is True         # the next step: every rank stops there


def signal_workbench_train(make_stage, tmp_path, signum):
    """``workbench train`` on a long stage, sent ``signum`` after 3 steps; returns ``(stage, returncode, out, err)``."""
    stage = make_stage(steps=100_000, checkpoint_every=0)
    config = tmp_path / "stage.yaml"
    stage.to_yaml(config)
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "train", "--config", str(config)],
                            env=worker_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_steps(proc, stage.stage_dir / "metrics.jsonl", 3)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    return stage, proc.returncode, out, err


@pytest.mark.slow
def test_ctrl_c_in_workbench_train_checkpoints_and_exits_130_without_a_traceback(make_stage, tmp_path):
    stage, returncode, out, err = signal_workbench_train(make_stage, tmp_path, signal.SIGINT)
    metrics = stage.stage_dir / "metrics.jsonl"
    assert returncode == 130, (out, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    [line] = [line for line in out.splitlines() if line.startswith("interrupted at step")]
    step = int(line.split()[3].rstrip(";"))
    path = ckpt.latest_valid_checkpoint(stage.checkpoint_dir)
    assert path.name == f"step_{step:07d}" and str(path) in line
    assert [json.loads(r)["step"] for r in metrics.read_text().splitlines()][-1] == step


@pytest.mark.slow
def test_sigterm_to_workbench_train_checkpoints_and_exits_143(make_stage, tmp_path):
    # SIGTERM: what Slurm / Kubernetes send before preempting
    stage, returncode, out, err = signal_workbench_train(make_stage, tmp_path, signal.SIGTERM)
    assert returncode == 143, (out, err)
    assert "Traceback" not in err, err
    [line] = [line for line in out.splitlines() if line.startswith("stopped by SIGTERM at step")]
    step = int(line.split()[5].rstrip(";"))
    assert ckpt.latest_valid_checkpoint(stage.checkpoint_dir).name == f"step_{step:07d}"


@pytest.mark.slow
def test_sigterm_to_two_gloo_processes_stops_every_rank_at_the_same_step_with_a_checkpoint(make_stage, tmp_path):
    from tests.train.conftest import BIN, WORKER, read_steps, stage_json
    from tests.train.test_distributed import free_port

    stage = make_stage(steps=100_000, micro_batch=4, checkpoint_every=0)   # global 8 = 2 ranks x 4
    out = tmp_path / "out"
    launch = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--num_cpu_threads_per_process", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port()), str(WORKER), "--stage", stage_json(stage), "--out", str(out)]
    proc = subprocess.Popen(launch, env=worker_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    wait_for_steps(proc, out / "rank1.jsonl", 3)
    os.killpg(proc.pid, signal.SIGTERM)                         # a scheduler signals the whole job
    log, _ = proc.communicate(timeout=180)
    ranks = [read_steps(out / f"rank{r}.jsonl") for r in (0, 1)]
    last = ranks[0][-1]["step"]
    assert ranks[1][-1]["step"] == last, log                    # every rank stopped at the same step
    path = ckpt.latest_valid_checkpoint(stage.checkpoint_dir)
    assert path is not None and path.name == f"step_{last:07d}", log
    assert ckpt.verify_checkpoint(path) == []


def wait_for_steps(proc, log, n: int, timeout: float = 180) -> None:
    """Poll ``log`` (one line per step) until it has ``n`` lines; fail with the process's output if it dies."""
    deadline = time.monotonic() + timeout
    while not (log.is_file() and len(log.read_text().splitlines()) >= n):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)


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
        f"t/s1: starting over (fresh=True removed checkpoints, samples, metrics.jsonl, stage.yaml in "
        f"{longer.stage_dir})"]
    metrics = longer.stage_dir / "metrics.jsonl"
    assert ckpt.list_checkpoints(longer.checkpoint_dir) == [] and (not metrics.exists() or metrics.read_text() == "")
    fresh.run()
    assert [r["step"] for r in fresh.history] == [1, 2, 3, 4]


def test_a_first_run_prints_nothing_about_resuming(make_stage, capsys):
    Trainer(make_stage(steps=1), progress=False)
    assert capsys.readouterr().out == ""
