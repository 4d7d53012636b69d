"""``workbench bench gpu``: the paper's xl_2 step on a GPU, over batch, mask, precision, compilation and memory.

One short run (``make gpu-check`` calls it, within a few minutes of device time) that measures what
the paper's cost depends on: img/s, the realised masked speed-up against the FLOP-theoretical one,
MFU against the GPU's bf16 matmul peak (measured in the same run) and its datasheet peak, and the
peak memory. Each entry of the plan is one ``bench_model`` call at mask 0 and 0.75; an entry that
runs out of memory is recorded as such, and entries past ``budget_s`` are recorded as skipped, so
the report always comes back.

Example::

    bench_gpu()                                  # on a GPU: the whole plan for xl_2 at 32x32x4 latents
    bench_gpu("nano", plan=[{"batch": 4}], latent_size=16)      # a small plan (the CPU test runs this)
"""

from __future__ import annotations

import time

import torch

from . import environment
from .model import bench_model
from .step import matmul_peak_gflops

# batch 256 at 32x32 latents is the paper's per-GPU batch of its 256 px stages
GPU_PLAN = (
    {"batch": 64, "bf16": False},
    {"batch": 64, "bf16": True},
    {"batch": 64, "weights_bf16": True},                         # bf16-mixed's compute copy: no autocast casts
    {"batch": 128, "bf16": True},
    {"batch": 256, "bf16": True},
    {"batch": 256, "bf16": True, "gradient_checkpointing": True},
    {"batch": 256, "weights_bf16": True},
    {"batch": 64, "bf16": True, "compile": True},
    {"batch": 256, "bf16": True, "compile": True, "gradient_checkpointing": True},
)


def datasheet_peak_flops(device_name: str) -> float | None:
    """The dense bf16 peak of a known GPU kind from its name (``eval.cost.GPUS``: SXM parts), else None."""
    from ..eval.cost import GPUS

    name = device_name.lower().replace(" ", "")
    if "pcie" in name or "nvl" in name:                # lower-clocked parts than the SXM datasheets in GPUS
        return None
    for key, gpu in GPUS.items():
        if key in name:
            return gpu.bf16_flops
    return None


def bench_gpu(preset: str = "xl_2", plan=GPU_PLAN, latent_size: int = 32, repeats: int = 5, budget_s: float = 420,
              progress=print) -> dict:
    """Run ``plan`` (dicts of ``bench_model`` options: batch, bf16, compile, gradient_checkpointing, weights_bf16);
    a report."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    peak = matmul_peak_gflops(n=8192 if device == "cuda" else 1024, dtype=dtype, device=device)
    datasheet = datasheet_peak_flops(environment()["device"]) if device == "cuda" else None
    report = {"benchmark": "gpu", "preset": preset, "latent_size": latent_size, "environment": environment(),
              "matmul_peak_gflops": round(peak, 1), "datasheet_peak_gflops": datasheet and round(datasheet / 1e9),
              "results": []}
    start = time.perf_counter()
    for options in plan:
        entry = {"batch": 16, "bf16": False, "compile": False, "gradient_checkpointing": False, "weights_bf16": False,
                 **options}
        if time.perf_counter() - start > budget_s:
            report["results"].append({**entry, "skipped": f"past the {budget_s:.0f} s budget"})
            continue
        began = time.perf_counter()
        try:
            rows = bench_model(presets=(preset,), latent_size=latent_size, repeats=repeats, progress=progress,
                               **entry)["results"]
        except torch.OutOfMemoryError:
            report["results"].append({**entry, "error": "out of memory"})
            progress(f"{preset} {entry}: out of memory")
            continue
        finally:
            if device == "cuda":
                torch.cuda.empty_cache()
        for row in rows:
            row.update(entry, wall_s=round(time.perf_counter() - began, 1),     # compiled: includes compiling
                       mfu_of_measured_peak=round(row["achieved_gflop_per_s"] / peak, 3))
            if datasheet:
                row["mfu_of_datasheet_peak"] = round(row["achieved_gflop_per_s"] * 1e9 / datasheet, 3)
            report["results"].append(row)
    return report
