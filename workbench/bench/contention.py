"""Training speed when another process wants a core: threads × OpenMP wait policy × a competitor.

On a small machine torch's intra-op threads spin while they wait for each other, so a second busy process
can slow a 2-thread step many times over (docs/benchmarks.md, "Contention"). Each cell runs in its own
process (the thread count and ``OMP_WAIT_POLICY`` must be set before torch starts), times the demo's train
step (``nano`` MicroDiT, EDM loss, backward, AdamW) for a fixed wall time, and reports images per second;
the competitor is a one-thread matmul loop started just before the cell and stopped after it::

    workbench bench contention --json docs/bench/contention.json

``slowdown`` is idle over busy img/s per setting; ``robust`` is the setting with the best busy speed whose
idle speed stays within 10% of the best idle speed (the rule for the demo's default).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

COMPETITOR = ("import torch; torch.set_num_threads(1); a = torch.randn(512, 512)\n"
              "while True:\n    a @ a")


def worker(preset: str, batch: int, resolution: int, mask_ratio: float, seconds: float) -> dict:
    """Images per second of the train step in this process (its threads are the environment's)."""
    import torch

    from ..diffusion import EDMConfig, EDMLoss
    from ..model import MicroDiT

    torch.manual_seed(0)
    model = MicroDiT.from_preset(preset, sample_size=resolution)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    loss_fn, cfg = EDMLoss(EDMConfig(sigma_data=0.5)), model.arch
    x0 = torch.randn(batch, cfg.in_channels, resolution, resolution)                   # (B, C, H, W)
    caption = torch.randn(batch, 16, cfg.caption_dim)                                  # (B, L, D): trimmed captions

    def step():
        loss_fn(model, x0, caption, None, mask_ratio=mask_ratio).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    for _ in range(3):
        step()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        steps += 1
    elapsed = time.perf_counter() - start
    return {"img_per_s": steps * batch / elapsed, "steps": steps, "threads": torch.get_num_threads()}


def _cell(threads: int, policy: str, competitor: bool, args: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env.pop("OMP_WAIT_POLICY", None)
    if policy == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    rival = subprocess.Popen([sys.executable, "-c", COMPETITOR], env={**os.environ, "OMP_NUM_THREADS": "1"}) \
        if competitor else None
    try:
        if rival:
            time.sleep(1.0)                                   # the competitor is running before the cell starts
        out = subprocess.run([sys.executable, "-m", "workbench.bench.contention", json.dumps(args)], env=env,
                             capture_output=True, text=True, check=True)
    finally:
        if rival:
            rival.kill()
            rival.wait()
    return {"threads": threads, "wait_policy": policy, "competitor": competitor, **json.loads(out.stdout)}


def bench_contention(preset: str = "nano", batch: int = 32, resolution: int = 16, mask_ratio: float = 0.75,
                     seconds: float = 8.0, threads=(1, 2), policies=("default", "passive")) -> dict:
    """Every cell of threads × wait policy × (idle, one competitor), then each setting's slowdown and the
    robust setting (see the module docstring)."""
    from . import environment

    args = {"preset": preset, "batch": batch, "resolution": resolution, "mask_ratio": mask_ratio, "seconds": seconds}
    cells = [_cell(t, p, c, args) for t in threads for p in policies for c in (False, True)]
    speed = {(c["threads"], c["wait_policy"], c["competitor"]): c["img_per_s"] for c in cells}
    settings = [{"threads": t, "wait_policy": p, "idle_img_per_s": speed[t, p, False],
                 "busy_img_per_s": speed[t, p, True], "slowdown": speed[t, p, False] / speed[t, p, True]}
                for t in threads for p in policies]
    best_idle = max(s["idle_img_per_s"] for s in settings)
    fair = [s for s in settings if s["idle_img_per_s"] >= 0.9 * best_idle]
    robust = max(fair, key=lambda s: s["busy_img_per_s"])
    return {"cells": cells, "settings": settings, "robust": robust, "workload": args,
            "cpu_count": os.cpu_count(), "environment": environment()}


if __name__ == "__main__":                                    # one cell, in its own process
    print(json.dumps(worker(**json.loads(sys.argv[1]))))
