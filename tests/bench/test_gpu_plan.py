"""``workbench bench gpu`` and ``make gpu-check``: the plan's rows, an out-of-memory entry and the time budget
recorded, and without a GPU one line and exit 0 (the GPU itself is exercised where one is lent)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from workbench.bench import gpu
from workbench.bench.gpu import bench_gpu, datasheet_peak_flops

ROOT = Path(__file__).resolve().parents[2]


def test_a_small_plan_reports_mfu_and_the_masked_speed_up(one_thread):
    plan = [{"batch": 2}, {"batch": 2, "gradient_checkpointing": True, "weights_bf16": True}]
    report = bench_gpu("nano", plan=plan, latent_size=16, repeats=1, progress=lambda line: None)
    rows = report["results"]
    assert len(rows) == 4 and report["matmul_peak_gflops"] > 0                   # two entries x masks 0 and 0.75
    assert [r["gradient_checkpointing"] for r in rows] == [False, False, True, True]
    assert all(0 < r["mfu_of_measured_peak"] < 1.5 and r["wall_s"] > 0 for r in rows)
    assert all("realised_over_theoretical" in r for r in rows if r["mask_ratio"] > 0)


def test_out_of_memory_and_the_budget_are_recorded_not_raised(monkeypatch):
    def out_of_memory(**options):
        raise torch.OutOfMemoryError("CUDA out of memory")
    monkeypatch.setattr(gpu, "bench_model", out_of_memory)
    report = bench_gpu("nano", plan=[{"batch": 512}], latent_size=16, progress=lambda line: None)
    assert report["results"] == [{"batch": 512, "bf16": False, "compile": False, "gradient_checkpointing": False,
                                  "weights_bf16": False, "error": "out of memory"}]
    skipped = bench_gpu("nano", plan=[{"batch": 2}], budget_s=-1, progress=lambda line: None)["results"]
    assert skipped[0]["skipped"].startswith("past the")


def test_datasheet_peaks_by_device_name():
    assert datasheet_peak_flops("NVIDIA H100 80GB HBM3") == 989.4e12
    assert datasheet_peak_flops("Some Other Card") is None and datasheet_peak_flops("NVIDIA H100 PCIe") is None


def test_gpu_check_without_a_gpu_says_so_and_exits_0(tmp_path):
    env = dict(os.environ, PY=sys.executable, OUT=str(tmp_path / "out"), CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([str(ROOT / "scripts" / "gpu-check")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines() == [
        "gpu-check: torch sees no CUDA GPU on this machine; nothing to check (run it where a GPU is lent)"]
