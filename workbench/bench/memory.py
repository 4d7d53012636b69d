"""``workbench bench memory``: does a long training run leak? Resident memory (RSS) over the steps of a real Trainer.

A small shapes set is prepared in a temporary folder; a stage of the given preset trains for
``steps`` steps with the usual logging, EMA and periodic checkpoints and sample grids. RSS is read
from ``/proc/self/statm`` after every ``every`` steps. After ``warmup`` steps (allocator pools,
caches, the first checkpoint) the growth to the end must stay under ``bound_mb``::

    report = bench_memory(preset="micro", steps=1000)      # docs/benchmarks.md, "Memory"
    report["growth_mb"], report["within_bound"]
"""

from __future__ import annotations

import gc
import os
import tempfile
from pathlib import Path

from . import environment
from ..errors import InputError


def rss_mb() -> float:
    """This process's resident set size in MB (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def bench_memory(preset: str = "micro", steps: int = 1000, warmup: int = 100, every: int = 25, batch: int = 8,
                 resolution: int = 16, bound_mb: float = 64.0, checkpoint_every: int = 250, sample_every: int = 250,
                 progress=print) -> dict:
    """RSS over a ``steps``-step training of ``preset``; returns a JSON-able report with ``growth_mb`` after warm-up.

    ``within_bound`` is ``growth_mb <= bound_mb``. The model runs on the GPU when there is one (RSS
    then measures the host side only).
    """
    from ..data.prepare import prepare
    from ..train import Stage, Trainer

    if not 0 < warmup < steps:
        raise InputError(f"warmup must be in (0, steps={steps}), got {warmup}")
    samples: list[tuple[int, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "shapes"
        prepare(source="shapes", out=data, resolutions=(resolution,), limit=256,
                text_encoder_options={"trim_padding": True}, progress=False)
        stage = Stage(name="memory", run="bench", runs_dir=str(Path(tmp) / "runs"), data=str(data),
                      resolution=resolution, model=preset, mask_ratio=0.75, steps=steps, global_batch=batch,
                      micro_batch=batch, lr=1e-4, ema_decay=0.999, sample_steps=2, sample_prompts=["a red circle"],
                      log_every=10, checkpoint_every=checkpoint_every, sample_every=sample_every, keep_last=1)

        def on_step(trainer, metrics):
            step = metrics["step"]
            if step % every == 0 or step == 1:
                gc.collect()
                samples.append((step, round(rss_mb(), 1)))
                if step % (every * 8) == 0:
                    progress(f"step {step}/{steps}: RSS {samples[-1][1]:.1f} MB")

        trainer = Trainer(stage, progress=False, on_step=on_step)
        trainer.run()
        trainer.close()
    after = [rss for step, rss in samples if step >= warmup]
    growth = round(after[-1] - after[0], 1)
    report = {"benchmark": "memory", "preset": preset, "steps": steps, "warmup": warmup, "batch": batch,
              "resolution": resolution, "checkpoint_every": checkpoint_every, "sample_every": sample_every,
              "rss_mb_after_warmup": after[0], "rss_mb_final": after[-1], "rss_mb_max_after_warmup": max(after),
              "growth_mb": growth, "bound_mb": bound_mb, "within_bound": growth <= bound_mb,
              "samples": samples, "environment": environment()}
    progress(f"{preset}, {steps} steps: RSS {after[0]:.1f} MB after {warmup} steps -> {after[-1]:.1f} MB at the end "
             f"(growth {growth:+.1f} MB, bound {bound_mb:.0f} MB: {'ok' if report['within_bound'] else 'EXCEEDED'})")
    return report
