"""Stop and Kernel › Interrupt during a foreground ``trainer.run()``, in a real kernel driven like JupyterLab does.

The test is the browser's side of the conversation: it starts the ``workbench`` kernel with
jupyter_client, runs the tour's pattern (a dashboard in one cell, ``trainer.run()`` in the next) and,
while that cell is busy, sends the Stop button's click as the comm message a browser sends, or
interrupts the kernel as JupyterLab's *Kernel › Interrupt* does.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from workbench.data.prepare import prepare
from workbench.train import checkpoint as ckpt
from workbench.widgets.kernel_events import event_subshell, handle_during_cells

STEPS = 100_000                   # far more than a test waits for: only Stop or an interrupt ends the run

SETUP = """
from workbench import Stage, Trainer
from workbench.notebook import log_lines
from workbench.widgets import TrainingDashboard
stage = Stage(name="fg", run="kernel", runs_dir={runs!r}, data={data!r}, resolution=16, model="nano",
              model_overrides={{"depth": 2, "width": 64, "mixer_width": 64}}, steps={steps}, global_batch=4,
              micro_batch=4, sample_every=0, sample_steps=2, log_every=1, sample_prompts=["a red circle"])
trainer = Trainer(stage, progress=False, on_step=log_lines(1))
dashboard = TrainingDashboard(trainer, throttle_s=0)
print("STOP-COMM", dashboard.stop_button.comm.comm_id, dashboard.live_stop, dashboard.stop_button.disabled)
"""
REPORT = ('print("RESULT", __import__("json").dumps({"step": trainer.step_count, "running": trainer.running, '
          '"interrupted": trainer.interrupted, "status": dashboard.status.value}))')


@pytest.fixture
def kernel(tmp_path):
    """A started ``workbench`` kernel (one torch thread) and a client; shut down afterwards."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    from jupyter_client.manager import start_new_kernel

    from workbench.kernel import install_kernel

    try:
        KernelSpecManager().get_kernel_spec("workbench")
    except NoSuchKernel:
        install_kernel()
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    manager, client = start_new_kernel(kernel_name="workbench", cwd=str(tmp_path), env=env)
    try:
        yield manager, client
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def collect(client, msg_id: str, timeout: float = 180) -> tuple[str, list[str]]:
    """stdout and error tracebacks of one execution, until the kernel is idle again."""
    out, errors = [], []
    deadline = time.monotonic() + timeout
    while True:
        msg = client.get_iopub_msg(timeout=max(1.0, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            out.append(content["text"])
        elif kind == "error":
            errors.append("\n".join(content["traceback"]))
        elif kind == "status" and content["execution_state"] == "idle":
            return "".join(out), errors


def wait_for_steps(stage_dir, n: int, timeout: float = 120) -> None:
    metrics = stage_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= n):
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)


def start_foreground_run(client, tmp_path) -> tuple[str, str, object]:
    """The tour's pattern on 8 scenes: a dashboard in one cell, then ``trainer.run()`` in the next, running.

    Returns (the Stop button's comm id, the running cell's msg id, the stage folder)."""
    data = tmp_path / "data"
    prepare(source="shapes", out=data, resolutions=(16,), limit=8, text_encoder_options={"trim_padding": True},
            progress=False)
    out, errors = collect(client, client.execute(SETUP.format(runs=str(tmp_path / "runs"), data=str(data),
                                                              steps=STEPS)))
    assert not errors, errors[0]
    comm_id, live, disabled = out.split("STOP-COMM")[1].split()[:3]
    assert live == "True" and disabled == "True"            # not running yet: Stop is greyed out
    run_id = client.execute("trainer.run()")
    stage_dir = tmp_path / "runs" / "kernel" / "fg"
    wait_for_steps(stage_dir, 3)
    return comm_id, run_id, stage_dir


def report(client) -> dict:
    out, errors = collect(client, client.execute(REPORT))
    assert not errors, errors[0]
    return json.loads(out.split("RESULT", 1)[1])


@pytest.mark.slow
def test_stop_ends_a_foreground_run_with_a_checkpoint(kernel, tmp_path):
    _, client = kernel
    comm_id, run_id, stage_dir = start_foreground_run(client, tmp_path)
    click = client.session.msg("comm_msg", {"comm_id": comm_id,
                                            "data": {"method": "custom", "content": {"event": "click"}}})
    client.shell_channel.send(click)                        # what the browser sends for a Button click
    out, errors = collect(client, run_id)
    assert not errors, errors[0]
    state = report(client)
    assert 3 <= state["step"] < STEPS and not state["running"] and state["interrupted"]
    assert f"step {state['step']}/{STEPS}" in state["status"] and "stopped" in state["status"]
    path = ckpt.latest_valid_checkpoint(stage_dir / "checkpoints")
    assert path.name == f"step_{state['step']:07d}" and ckpt.verify_checkpoint(path) == []
    # the same one line as Ctrl-C: where it stopped, the checkpoint, how to resume
    [line] = [line for line in out.splitlines() if line.startswith("stopped (Stop button")]
    assert f"at step {state['step']}; checkpoint {path}; resume with" in line


@pytest.mark.slow
def test_kernel_interrupt_ends_a_foreground_run_with_a_checkpoint_and_no_traceback(kernel, tmp_path):
    manager, client = kernel
    _, run_id, stage_dir = start_foreground_run(client, tmp_path)
    manager.interrupt_kernel()                              # Kernel › Interrupt: SIGINT to the kernel
    out, errors = collect(client, run_id)
    assert errors == [] and "KeyboardInterrupt" not in out and "Traceback" not in out
    [line] = [line for line in out.splitlines() if line.startswith("interrupted at step")]
    state = report(client)
    assert state["interrupted"] and not state["running"] and "stopped" in state["status"]
    path = ckpt.latest_valid_checkpoint(stage_dir / "checkpoints")
    assert path.name == f"step_{state['step']:07d}" and str(path) in line


def test_outside_a_kernel_nothing_is_rerouted():
    import ipywidgets as W

    button = W.Button(description="Stop")
    assert event_subshell() is None and handle_during_cells(button) is False
