"""The cost model: FLOPs from MicroDiT.flops, GPU-hours at an MFU, dollars; the paper's $1,890 as the anchor."""

from __future__ import annotations

import pytest
import torch

from workbench.eval.cost import (PAPER_GPU_HOURS, PAPER_STAGES, StagePlan, forward_flops, gpu_hours, paper_cost_table,
                                 paper_headline, paper_implied_mfu, project, stage_plan)
from workbench.model import MicroDiT
from workbench.train import Stage


def test_paper_headline_is_2_6_days_on_8_h100_at_about_3_79_per_hour():
    paper = paper_headline()
    assert paper["gpu_hours"] == pytest.approx(499.2)
    assert paper["price_per_gpu_hour"] == pytest.approx(3.79, abs=0.01)


def test_a_training_step_costs_three_forward_passes_of_the_model():
    plan = StagePlan("s", "nano", 32, 0.75, 10, 8)
    with torch.device("meta"):
        model = MicroDiT.from_preset("nano")
    assert plan.flops_per_step() == 3 * model.flops(32, 0.75, 8)
    assert plan.total_flops() == 10 * plan.flops_per_step()
    assert forward_flops("nano", 32, 0.0, 1) > forward_flops("nano", 32, 0.75, 1)   # masking cuts compute


def test_projecting_the_paper_at_its_implied_mfu_gives_back_its_cost():
    table = paper_cost_table()
    assert [r["name"] for r in table["rows"]] == ["stage1", "stage2", "stage3", "stage4"]
    assert table["total"]["steps"] == 335_000
    assert table["total"]["gpu_hours"] == pytest.approx(PAPER_GPU_HOURS)
    assert table["total"]["dollars"] == pytest.approx(1890)
    assert table["total"]["wall_hours"] == pytest.approx(2.6 * 24)
    assert 0.1 < paper_implied_mfu() < 0.3                # a plausible bf16 MFU for a 1.16B DiT on H100s


def test_masking_makes_the_paper_schedule_more_than_twice_cheaper():
    masked, unmasked = paper_cost_table(), paper_cost_table(mask=False)
    assert unmasked["total"]["dollars"] / masked["total"]["dollars"] > 2
    assert all(r["mask_ratio"] == 0 for r in unmasked["rows"])


def test_hours_scale_inversely_with_mfu_and_a_bad_mfu_is_named():
    plans = PAPER_STAGES[:1]
    hours = {mfu: project(plans, mfu=mfu)["total"]["gpu_hours"] for mfu in (0.2, 0.4)}
    assert hours[0.2] == pytest.approx(2 * hours[0.4])
    assert gpu_hours(989.4e12 * 3600, mfu=1.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="mfu"):
        gpu_hours(1e18, mfu=0.0)


def test_a_stage_plan_reads_the_stage_and_the_codec_downsample():
    stage = Stage(name="s3", resolution=512, model="xl_2", mask_ratio=0.75, steps=50_000, global_batch=2048,
                  micro_batch=256, model_overrides={"pos_interp_scale": 2.0, "sample_size": 64})
    plan = stage_plan(stage, latent_downsample=8)
    assert plan == StagePlan("s3", "xl_2", 64, 0.75, 50_000, 2048,
                             (("pos_interp_scale", 2.0), ("sample_size", 64)))
    assert plan.total_flops() == pytest.approx(PAPER_STAGES[2].total_flops())
