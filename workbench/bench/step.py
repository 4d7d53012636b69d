"""``workbench bench step``: what one real ``Trainer.step()`` costs the host, measurable without a GPU.

A GPU step is host-bound when the CPU cannot dispatch its operators as fast as the GPU runs them,
so the number of **top-level dispatched aten ops per step** (each one a trip through Python, the
dispatcher and, on a GPU, a kernel launch) is what decides it, and it can be counted on any machine.
For one preset, mask ratio and batch this benchmark reports, from the same run and threads:

- ``aten_ops_per_step``: aten ops called from Python (not from inside another aten op), per step,
  counted by ``torch.profiler`` over a few real ``Trainer.step()`` calls (loader, noise, EDM loss,
  backward, clipping, AdamW, EMA);
- ``host_ms_per_step``: the step's wall time (unprofiled) minus the time spent inside those ops:
  Python and framework work between operators;
- ``top_ops`` and ``top_self_time`` (with ``--profile``): the commonest ops, and where the time goes
  (self CPU time per op, its share of the time inside ops);
- ``img_per_s`` and ``mfu``: the analytic training FLOPs (3x the forward, ``eval.cost``) per second,
  over ``matmul_peak_gflops``, an fp32 (or bf16) matmul measured just before with the same threads.

Example::

    bench_step(preset="micro", mask_ratio=0.75, batch=16)     # {"aten_ops_per_step": ..., "mfu": ...}
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path
from statistics import median

import torch

from . import environment


def matmul_peak_gflops(n: int = 1024, dtype: torch.dtype = torch.float32, repeats: int = 10,
                       device: str = "cpu") -> float:
    """The best GFLOP/s of an ``n x n`` matmul in ``dtype``: the peak an MFU figure is measured against."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def _under_aten_op(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False


def top_level_aten_events(prof) -> list:
    """The profiler's aten ops dispatched from outside any other aten op: what the host issues per step."""
    return [e for e in prof.events() if e.name.startswith("aten::") and not _under_aten_op(e)]


def profile_steps(trainer, steps: int) -> dict:
    """Top-level aten ops of ``steps`` ``trainer.step()`` calls: per-step count, time inside them, the commonest."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            trainer.step()
    top = top_level_aten_events(prof)
    counts = Counter(e.name for e in top)
    total_us = sum(e.cpu_time_total for e in top)
    by_time = sorted(prof.key_averages(), key=lambda a: a.self_cpu_time_total, reverse=True)[:12]
    return {"aten_ops_per_step": round(len(top) / steps, 1),
            "ms_in_ops_per_step": total_us / 1000 / steps,
            "top_ops": [{"op": name, "per_step": round(n / steps, 1)} for name, n in counts.most_common(12)],
            "top_self_time": [{"op": a.key, "ms_per_step": round(a.self_cpu_time_total / 1000 / steps, 2),
                               "share": round(a.self_cpu_time_total / max(total_us, 1), 3)} for a in by_time]}


def bench_step(preset: str = "micro", mask_ratio: float = 0.75, batch: int = 16, resolution: int = 32,
               steps: int = 6, profile_steps_n: int = 3, mixed_precision: str = "no", compile: bool = False,
               data: str | Path | None = None, progress=print) -> dict:
    """Profile real ``Trainer.step()`` calls of one preset at one mask ratio and batch; a JSON-able report.

    ``data`` is a prepared dataset with ``resolution`` in it; by default a small shapes set is
    prepared in a temporary folder (pixel codec, MiniLM captions), as ``bench train`` does. With
    ``compile`` each block is compiled (``Stage.compile``); ``first_step_s`` then holds the compilation.
    """
    from ..data.prepare import prepare
    from ..eval.cost import forward_flops
    from ..train import Stage, Trainer

    with tempfile.TemporaryDirectory() as tmp:
        if data is None:
            data = Path(tmp) / "shapes"
            prepare(source="shapes", out=data, resolutions=(resolution,), limit=max(4 * batch, 128),
                    text_encoder_options={"trim_padding": True}, progress=False)
        stage = Stage(name="step", run="bench", runs_dir=str(Path(tmp) / "runs"), data=str(data), resolution=resolution,
                      model=preset, mask_ratio=mask_ratio, steps=steps + profile_steps_n + 2, global_batch=batch,
                      micro_batch=batch, lr=1e-4, ema_decay=0.999, mixed_precision=mixed_precision, compile=compile,
                      sample_steps=1, sample_prompts=["a red circle"], log_every=1000)
        trainer = Trainer(stage, progress=False)
        try:
            latent_side = trainer.info.latent_shapes[resolution][-1]            # (C, h, w) of the prepared rows
            dtype = torch.bfloat16 if mixed_precision in ("bf16", "bf16-mixed") else torch.float32
            peak = matmul_peak_gflops(dtype=dtype, device=trainer.accelerator.device.type)
            start = time.perf_counter()
            trainer.step()                                        # warm-up: allocations, first-call paths, compiling
            first_step_s = time.perf_counter() - start
            seconds = []
            for _ in range(steps):
                start = time.perf_counter()
                trainer.step()
                seconds.append(time.perf_counter() - start)
            profiled = profile_steps(trainer, profile_steps_n)
            # the peak again after the steps, keeping the higher: one slow measurement (a busy or
            # clocked-down core) would otherwise inflate the MFU, even past 1
            peak = max(peak, matmul_peak_gflops(dtype=dtype, device=trainer.accelerator.device.type))
        finally:
            trainer.close()
    step_s = median(seconds)
    train_flops = 3 * forward_flops(preset, latent_side, mask_ratio, batch)
    report = {"benchmark": "step", "preset": preset, "mask_ratio": mask_ratio, "batch": batch,
              "resolution": resolution, "mixed_precision": mixed_precision, "compile": compile,
              "environment": environment(), "first_step_s": round(first_step_s, 2),
              "aten_ops_per_step": profiled["aten_ops_per_step"],
              "host_ms_per_step": round(max(0.0, 1000 * step_s - profiled["ms_in_ops_per_step"]), 1),
              "ms_per_step": round(1000 * step_s, 1), "img_per_s": round(batch / step_s, 1),
              "train_gflop_per_step": round(train_flops / 1e9, 3),
              "achieved_gflop_per_s": round(train_flops / step_s / 1e9, 1),
              "matmul_peak_gflops": round(peak, 1), "mfu": round(train_flops / step_s / 1e9 / peak, 3),
              "top_ops": profiled["top_ops"], "top_self_time": profiled["top_self_time"]}
    progress(f"{preset} mask {mask_ratio:.2f} batch {batch}{' compiled' if compile else ''}: "
             f"{report['aten_ops_per_step']:.0f} aten ops/step, "
             f"host {report['host_ms_per_step']:.1f} of {report['ms_per_step']:.1f} ms/step, "
             f"{report['img_per_s']:.1f} img/s, {100 * report['mfu']:.0f}% of the {peak:.0f} GFLOP/s matmul peak")
    return report
