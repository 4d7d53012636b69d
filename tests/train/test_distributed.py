"""Training in subprocesses: SIGKILL + resume is bit-exact; 2-process accelerate (gloo, CPU) equals 1 process.

The references train in this process (one thread, like the workers) while the subprocess runs.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time

import pytest
import torch

from tests.train.conftest import (BIN, ROOT, WORKER, final_weights, losses, read_steps, run_worker, stage_json,
                                  worker_command, worker_env)
from tests.train.train_worker import param_hash
from workbench.train import Trainer
from workbench.train import checkpoint as ckpt

pytestmark = pytest.mark.slow


def start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=worker_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 180) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"worker failed ({proc.returncode}):\n{out}\n{err[-4000:]}"
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_in_process(stage) -> list[dict]:
    """Train ``stage`` here (while a subprocess runs), recording what the worker records."""
    steps = []
    trainer = Trainer(stage, progress=False, on_step=lambda t, m: steps.append(
        {"step": m["step"], "loss": m["loss"], "hash": param_hash(t.accelerator.unwrap_model(t.model))}))
    trainer.run()
    return steps


def test_sigkill_then_resume_repeats_the_uninterrupted_run_bit_for_bit(make_stage, tmp_path):
    kwargs = dict(steps=10, checkpoint_every=2, keep_last=2, ema_decay=0.9, caption_dropout=0.3, mask_ratio=0.5)
    reference = make_stage(runs_dir=str(tmp_path / "reference"), **kwargs)
    stage = make_stage(runs_dir=str(tmp_path / "killed"), **kwargs)
    victim = start(worker_command(stage, tmp_path / "out", sleep=0.2))
    ref_steps = {r["step"]: r for r in train_in_process(reference)}   # one thread, as the worker

    kill_after = 3                                       # step 3 is done; the newest checkpoint is step 2
    deadline = time.monotonic() + 120
    while not any(r["step"] >= kill_after for r in read_steps(tmp_path / "out" / "rank0.jsonl")):
        assert victim.poll() is None, f"the worker ended early: {victim.communicate()}"
        assert time.monotonic() < deadline, "the worker never reached the kill step"
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    killed_at = read_steps(tmp_path / "out" / "rank0.jsonl")[-1]["step"]
    assert kill_after <= killed_at < stage.steps
    newest = ckpt.latest_valid_checkpoint(stage.checkpoint_dir)
    resume_step = int(newest.name.split("_")[1])
    assert 0 < resume_step <= killed_at and not ckpt.is_final(newest)

    resumed = run_worker(worker_command(stage, tmp_path / "out"))  # the very same command
    [start_line] = [json.loads(line) for line in resumed.stdout.splitlines() if line.startswith("{")]
    assert start_line["start_step"] == resume_step and start_line["resumed_from"].endswith(newest.name)
    assert f"t/s1: resuming at step {resume_step} of {stage.steps} from {newest}" in resumed.stdout

    # every loss (metrics.jsonl is truncated to the checkpoint and rewritten) and every step's weights
    assert losses(stage) == losses(reference)
    lines = read_steps(tmp_path / "out" / "rank0.jsonl")
    before = [r for r in lines if r["pid"] == lines[0]["pid"]]                     # the killed process
    after = [r for r in lines if r["pid"] != lines[0]["pid"]]                      # the resumed process
    assert [r["step"] for r in after] == list(range(resume_step + 1, stage.steps + 1))
    for r in before + after:
        assert (r["loss"], r["hash"]) == (ref_steps[r["step"]]["loss"], ref_steps[r["step"]]["hash"])
    for ema in (False, True):
        a, b = final_weights(stage, ema), final_weights(reference, ema)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_gloo_processes_keep_identical_replicas_and_match_one_process(make_stage, tmp_path):
    kwargs = dict(steps=4, global_batch=8, ema_decay=0.9, mask_ratio=0.5, lr=2e-3)
    multi = make_stage(runs_dir=str(tmp_path / "multi"), micro_batch=2, **kwargs)    # 2 ranks x 2 x 2 accumulation
    single = make_stage(runs_dir=str(tmp_path / "single"), micro_batch=8, **kwargs)
    launch = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--num_cpu_threads_per_process", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port()), str(WORKER), "--stage", stage_json(multi),
              "--out", str(tmp_path / "multi_out")]
    proc = start(launch)
    one = train_in_process(single)                       # meanwhile, 1 process here
    finish(proc, timeout=240)

    ranks = [read_steps(tmp_path / "multi_out" / f"rank{r}.jsonl") for r in (0, 1)]
    assert [[r["step"] for r in rank] for rank in ranks] == [[1, 2, 3, 4]] * 2     # both ranks ran every step
    assert all(r["world"] == 2 for rank in ranks for r in rank)
    assert ranks[0][0]["pid"] != ranks[1][0]["pid"]
    for a, b in zip(*ranks):                                                       # identical replicas each step
        assert a["hash"] == b["hash"] and a["loss"] == b["loss"]
    assert len({r["hash"] for r in ranks[0]}) == 4                                 # and they did train

    assert [r["step"] for r in one] == [1, 2, 3, 4]
    assert [r["loss"] for r in ranks[0]] == pytest.approx([r["loss"] for r in one], rel=1e-5)
    for ema in (False, True):
        a, b = final_weights(multi, ema), final_weights(single, ema)
        diff = max((a[k] - b[k]).abs().max().item() for k in a)
        assert diff < 1e-4, f"{'EMA' if ema else 'model'} differs from 1-process training by {diff}"
    assert [p.name for p in ckpt.list_checkpoints(multi.checkpoint_dir)] == ["step_0000004"]


def test_accelerate_launch_runs_the_train_cli_on_two_processes(make_stage, tmp_path):
    stage = make_stage(micro_batch=4)                    # global 8 = 2 ranks x 4
    config = tmp_path / "stage.yaml"
    stage.to_yaml(config)
    launch = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--num_cpu_threads_per_process", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port()), "-m", "workbench", "train", "--config", str(config)]
    out = finish(start(launch), timeout=240)
    reports = [line for line in out.splitlines() if "outputs in" in line]
    assert len(reports) == 1 and "step 4/4" in reports[0] and "(2 process(es))" in reports[0]   # one report, 2 ranks
    assert sorted(losses(stage)) == [1, 2, 3, 4]
    assert ckpt.resolve_checkpoint(stage.stage_dir).name == "step_0000004"
