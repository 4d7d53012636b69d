"""The CUDA paths: training in fp32 / bf16 / fp16, torch.compile, GPU checkpoints read on the CPU, sampling.

Skipped, with the reason printed by ``-ra``, where torch sees no CUDA GPU (the CI machines).
They ran on an H100 lent through the project's device tool (docs/benchmarks.md, "GPU").
Data: 64 shapes scenes at 16 px with a tiny random CLIP text encoder (32-d captions), so the
module needs no downloaded weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.train.conftest import BASE, TINY_MODEL, losses
from workbench.train import Stage, Trainer
from workbench.train.checkpoint import load_model
from workbench.train.inference import sample_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")


@pytest.fixture(scope="module")
def gpu_data(tmp_path_factory, tiny_clip_dir):  # noqa: F811
    from workbench.data.prepare import prepare

    out = tmp_path_factory.mktemp("gpu_prepared") / "shapes"
    prepare(source="shapes", out=out, text_encoder=str(tiny_clip_dir), resolutions=(16,), limit=64, n=64,
            progress=False)
    return out


@pytest.fixture
def gpu_stage(gpu_data, tmp_path):
    """``gpu_stage(**changes)``: a tiny stage on the GPU data (32-d captions)."""
    def make(**changes) -> Stage:
        values = {**BASE, "data": str(gpu_data), "runs_dir": str(tmp_path / "runs"),
                  "model_overrides": {**TINY_MODEL, "caption_dim": 32}, **changes}
        return Stage(**values)
    return make


@pytest.mark.parametrize("precision", ["no", "bf16", "fp16", "bf16-mixed"])
def test_training_on_the_gpu_learns_in_each_precision(gpu_stage, precision):
    stage = gpu_stage(name=f"gpu_{precision}", steps=120, mixed_precision=precision, ema_decay=0.9, log_every=1)
    trainer = Trainer(stage, progress=False)
    assert next(trainer.model.parameters()).device.type == "cuda"
    history = trainer.run()
    loss = [h["loss"] for h in history if np.isfinite(h["loss"])]
    first, last = np.mean(loss[:10]), np.mean(loss[-10:])
    assert last < 0.8 * first, f"{precision}: loss {first:.3f} -> {last:.3f}"
    # fp16 may skip a few overflowing steps while the GradScaler finds its scale; the others none
    assert trainer.nonfinite_total <= (10 if precision == "fp16" else 0)
    # the checkpoint written on the GPU loads on the CPU and gives the GPU model's EMA output
    cpu_model = load_model(stage.stage_dir)
    x, c_noise = torch.randn(2, 3, 16, 16), torch.zeros(2)
    caption, mask = torch.randn(2, 8, 32), torch.ones(2, 8, dtype=torch.long)
    with torch.no_grad():
        on_cpu = cpu_model(x, c_noise, caption, mask).sample
        on_gpu = trainer.ema(x.cuda(), c_noise.cuda(), caption.cuda(), mask.cuda()).sample.cpu()
    torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-2, atol=1e-3)


def test_gpu_and_cpu_first_steps_agree(gpu_stage, tmp_path):
    """Noise, masks and caption dropout are drawn on the CPU: a GPU run trains on the same problem."""
    gpu = Trainer(gpu_stage(name="gpu", steps=3), progress=False)
    gpu.run()
    cpu_stage = gpu_stage(name="cpu", steps=3)
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    cpu = Trainer(cpu_stage, accelerator=Accelerator(cpu=True), progress=False)
    assert next(cpu.model.parameters()).device.type == "cpu"
    cpu.run()
    AcceleratorState._reset_state(reset_partial_state=True)   # later tests build a GPU accelerator again
    a, b = losses(gpu.stage), losses(cpu_stage)
    assert a.keys() == b.keys() == {1, 2, 3}
    for step in a:        # TF32 convolutions and reduction order differ; the losses agree to ~1e-3
        assert a[step] == pytest.approx(b[step], rel=2e-2), (step, a[step], b[step])


def test_a_gpu_step_does_not_synchronise(gpu_stage):
    """Nothing in a step waits for the GPU: CUDA's sync debug mode raises on any synchronising call."""
    trainer = Trainer(gpu_stage(name="nosync", steps=10), progress=False)
    trainer.step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            trainer._step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(trainer.pending) == 3


def test_compiled_training_matches_eager(gpu_stage):
    eager = Trainer(gpu_stage(name="eager", steps=4), progress=False)
    eager.run()
    compiled = Trainer(gpu_stage(name="compiled", steps=4, compile=True), progress=False)
    compiled.run()
    a, b = losses(eager.stage), losses(compiled.stage)
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-2), (step, a[step], b[step])
    # the compiled trainer's checkpoint holds plain parameter names (no _orig_mod prefix) and loads anywhere
    load_model(compiled.stage.stage_dir)


def test_sample_checkpoint_on_gpu_matches_cpu(gpu_stage, tmp_path):
    stage = gpu_stage(name="sample", steps=30)
    Trainer(stage, progress=False).run()
    prompts = ["a red circle", "two blue squares"]
    kwargs = dict(steps=6, cfg_scale=2.0, seed=3, per_prompt=2)
    on_gpu = sample_checkpoint(stage.stage_dir, prompts, out=tmp_path / "gpu.png", device="cuda", **kwargs)
    on_cpu = sample_checkpoint(stage.stage_dir, prompts, out=tmp_path / "cpu.png", device="cpu", **kwargs)
    from PIL import Image

    a = np.asarray(Image.open(on_gpu), dtype=np.float32)
    b = np.asarray(Image.open(on_cpu), dtype=np.float32)
    assert a.shape == b.shape and a.std() > 1.0          # not a blank grid
    assert np.abs(a - b).mean() < 2.0, np.abs(a - b).mean()


def test_resume_on_the_gpu_continues_the_run(gpu_stage):
    """RNG states are read back onto the CPU (a CUDA copy crashed restore_rng), and the run goes on as if unbroken."""
    full = gpu_stage(name="full", steps=8, checkpoint_every=4)
    Trainer(full, progress=False).run()
    part = gpu_stage(name="part", steps=8, checkpoint_every=4)
    Trainer(part, progress=False).run(steps=4)
    resumed = Trainer(part, resume="auto", progress=False)
    assert resumed.resumed_from and resumed.step_count == 4
    resumed.run()
    a, b = losses(full), losses(part)
    assert a.keys() == b.keys() == set(range(1, 9))
    for step in a:        # same data, noise and masks; GPU reductions are not bit-exact
        assert a[step] == pytest.approx(b[step], rel=1e-3), (step, a[step], b[step])
