"""The cost model against the paper: its comparison table, projections onto other GPUs, `workbench cost`."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import yaml

from workbench.cli import main
from workbench.cost_report import (comparison_html, cost_vs_mfu_figure, format_dollars, no_tex, projection_html,
                                   projection_text, recipe_plans, stage_cost_figure)
from workbench.eval.cost import (GPUS, PAPER_STAGES, StagePlan, get_gpu, paper_comparison, paper_implied_mfu, project,
                                 stage_plan)
from workbench.model import MicroDiT
from workbench.train import Stage

ROOT = Path(__file__).resolve().parents[2]
PAPER_CONFIGS = ROOT / "configs" / "paper"
DEMO_CONFIGS = ROOT / "configs" / "demo"


# ---------------------------------------------------------------------------------------------
#  The paper's comparison table
# ---------------------------------------------------------------------------------------------

def test_the_comparison_carries_the_papers_stated_figures_exactly():
    rows = {r.model: r for r in paper_comparison()}
    assert list(rows) == ["MicroDiT_XL_2", "Stable Diffusion", "PixArt-alpha"]
    micro, sd, pixart = rows.values()
    assert micro.dollars == 1890.0 and micro.gpu == "H100" and micro.gpu_hours == pytest.approx(2.6 * 24 * 8)
    assert micro.train_images == 37_000_000 and micro.fid == 12.66
    with torch.device("meta"):
        assert micro.params == MicroDiT.from_preset("xl_2").summary().total == 1_165_442_320
    assert pixart.dollars == 28_400.0 and pixart.cheaper_by == 14
    assert sd.dollars is None and sd.cheaper_by == 118
    assert sd.dollars_estimate() == 118 * 1890 == 223_020                 # only the paper's ratio says what SD cost
    assert all("arXiv:2407.15811" in r.source for r in rows.values())


def test_the_papers_14x_against_pixart_is_not_the_ratio_of_its_own_dollar_figures():
    pixart = next(r for r in paper_comparison() if r.model == "PixArt-alpha")
    assert pixart.ratio_from_dollars() == pytest.approx(28_400 / 1890) == pytest.approx(15.03, abs=0.005)
    assert round(pixart.ratio_from_dollars()) == 15 != pixart.cheaper_by       # kept as stated; the table shows both
    assert "15.03x" in comparison_html() and "14x" in comparison_html()


def test_comparison_and_projection_html_escape_every_dollar():
    for page in (comparison_html(), projection_html(project(PAPER_STAGES)),
                 projection_html(project(recipe_plans(str(DEMO_CONFIGS / "pipeline.yaml"))))):
        assert "$" not in page and "&#36;" in page
    assert "&#36;1,890" in comparison_html() and "&#36;223,020" in comparison_html()
    assert no_tex("costs $5", markdown=True) == "costs \\$5"


@pytest.mark.parametrize("dollars, text", [(1890.0, "$1,890"), (1890.4, "$1,890"), (223_020, "$223,020"),
                                           (12.345, "$12.35"), (0.5, "$0.50"), (0.03, "$0.03"), (0.0312, "$0.0312"),
                                           (0.000263, "$0.000263"), (0, "$0"), (-3.5, "-$3.50")])
def test_dollars_keep_their_cents_and_small_amounts_their_digits(dollars, text):
    assert format_dollars(dollars) == text


# ---------------------------------------------------------------------------------------------
#  Projections
# ---------------------------------------------------------------------------------------------

def test_the_papers_stages_on_h100_at_the_implied_mfu_and_price_give_back_1890_on_8_gpus_in_2_6_days():
    paper = project(PAPER_STAGES, gpu="h100")                  # mfu None: the paper-implied one; price 3.79
    assert paper["mfu"] == pytest.approx(paper_implied_mfu()) and paper["price"] == 3.79
    assert paper["total"]["dollars"] == pytest.approx(1890, rel=0.01)
    assert paper["total"]["gpu_hours"] == pytest.approx(499.2)
    assert paper["total"]["wall_days"] == pytest.approx(2.6)
    assert sum(r["wall_days"] for r in paper["rows"]) == pytest.approx(paper["total"]["wall_days"])


@pytest.mark.parametrize("gpu", list(GPUS))
def test_halving_the_mfu_doubles_cost_and_days_and_twice_the_gpus_halve_the_days_only(gpu):
    base = project(PAPER_STAGES, mfu=0.45, gpu=gpu, gpus=8)
    half = project(PAPER_STAGES, mfu=0.225, gpu=gpu, gpus=8)
    wide = project(PAPER_STAGES, mfu=0.45, gpu=gpu, gpus=16)
    assert half["total"]["dollars"] == pytest.approx(2 * base["total"]["dollars"])
    assert half["total"]["wall_days"] == pytest.approx(2 * base["total"]["wall_days"])
    assert wide["total"]["wall_days"] == pytest.approx(base["total"]["wall_days"] / 2)
    assert wide["total"]["dollars"] == pytest.approx(base["total"]["dollars"])
    hours = base["total"]["flops"] / (0.45 * GPUS[gpu].bf16_flops) / 3600
    assert base["total"]["gpu_hours"] == pytest.approx(hours) and base["total"]["dollars"] == pytest.approx(
        hours * GPUS[gpu].price)


def test_gpu_peaks_are_the_datasheets_dense_bf16_figures_and_prices_are_overridable():
    assert {name: gpu.bf16_flops for name, gpu in GPUS.items()} == {
        "a100": 312e12, "h100": 989.4e12, "h200": 989.4e12, "l40s": 362.05e12}
    assert all(gpu.price > 0 and gpu.price_note and gpu.peak_source for gpu in GPUS.values())
    a100, h100 = (project(PAPER_STAGES, mfu=0.4, gpu=g, price=2.0) for g in ("a100", "h100"))
    assert a100["price"] == h100["price"] == 2.0
    assert a100["total"]["gpu_hours"] / h100["total"]["gpu_hours"] == pytest.approx(989.4 / 312)
    assert get_gpu("H200") is GPUS["h200"]


def test_the_default_mfu_is_the_papers_h100_efficiency_on_every_gpu():
    implied = paper_implied_mfu()
    assert 0.15 < implied < 0.22
    for name in GPUS:
        assert project(PAPER_STAGES[:1], gpu=name)["mfu"] == pytest.approx(implied)


def test_an_unknown_gpu_names_the_known_ones_and_an_mfu_outside_0_1_is_refused():
    with pytest.raises(ValueError, match=r"unknown GPU kind 'v100'; known: a100, h100, h200, l40s"):
        get_gpu("v100")
    for bad in (0, -0.1, 1.01, 45):
        with pytest.raises(ValueError, match=r"mfu: expected a fraction in \(0, 1\]"):
            project(PAPER_STAGES[:1], mfu=bad)
    with pytest.raises(ValueError, match=r"45 % is 0.45"):
        project(PAPER_STAGES[:1], mfu=45)
    assert project(PAPER_STAGES[:1], mfu=1.0)["mfu"] == 1.0
    with pytest.raises(ValueError, match="gpus"):
        project(PAPER_STAGES[:1], gpus=0)


# ---------------------------------------------------------------------------------------------
#  Recipes: the paper, its YAMLs, pipelines
# ---------------------------------------------------------------------------------------------

def test_configs_paper_is_the_papers_four_stages_flop_for_flop():
    from_yaml = recipe_plans(str(PAPER_CONFIGS))                # a folder of stage YAMLs: 256 px / xl_2's 32 = f8
    assert from_yaml == list(PAPER_STAGES) == recipe_plans("paper")
    two = recipe_plans(f"{PAPER_CONFIGS / 'stage1.yaml'},{PAPER_CONFIGS / 'stage3.yaml'}")
    assert two == [PAPER_STAGES[0], PAPER_STAGES[2]]
    assert recipe_plans(str(PAPER_CONFIGS / "stage1.yaml"), latent_downsample=4)[0].latent_side == 64


def test_a_pipeline_recipe_applies_its_overrides_and_its_latent_downsample(tmp_path):
    stages = [str(DEMO_CONFIGS / f"stage{i}.yaml") for i in (1, 2)]
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"run": "cost", "stages": stages, "overrides": {"steps": 10},
                                      "stage_overrides": {"stage2": {"mask_ratio": 0.5}}, "latent_downsample": 2}))
    plans = recipe_plans(str(config))
    assert [(p.name, p.steps, p.mask_ratio, p.latent_side) for p in plans] == [
        ("stage1", 10, 0.75, 8), ("stage2", 10, 0.5, 8)]
    assert recipe_plans(str(tmp_path)) == plans                    # the folder's pipeline.yaml
    assert [p.latent_side for p in recipe_plans(str(config), latent_downsample=1)] == [16, 16]
    assert len(recipe_plans("demo")) == 4                          # a shipped pipeline by name


def test_a_stage_whose_resolution_does_not_fit_its_model_asks_for_the_downsample():
    stage = Stage(name="odd", resolution=100, model="xl_2", steps=10, global_batch=8, micro_batch=8)
    with pytest.raises(ValueError, match="latent-downsample"):
        stage_plan(stage, latent_downsample=None)
    assert stage_plan(stage, latent_downsample=4) == StagePlan("odd", "xl_2", 25, stage.mask_ratio, 10, 8)


# ---------------------------------------------------------------------------------------------
#  workbench cost
# ---------------------------------------------------------------------------------------------

def test_cli_cost_prints_a_stage_table_and_a_total(capsys):
    assert main(["cost", "--config", str(PAPER_CONFIGS), "--gpu", "h100", "--mfu", "0.45"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["stage", "model", "latent", "mask", "steps", "batch", "FLOP", "GPU-h", "days", "USD"]
    assert [line.split()[0] for line in lines[1:6]] == ["stage1", "stage2", "stage3", "stage4", "total"]
    expected = project(PAPER_STAGES, mfu=0.45, gpu="h100")["total"]
    assert lines[5].split()[-1] == format_dollars(expected["dollars"]) == "$777"
    assert "8 x NVIDIA H100 SXM 80GB" in out and "45.0% MFU" in out and "$3.79 per GPU-hour" in out
    assert out.strip() == projection_text(project(PAPER_STAGES, mfu=0.45, gpu="h100")).strip()


def test_cli_cost_json_is_the_projection(capsys):
    assert main(["cost", "--config", str(PAPER_CONFIGS), "--gpu", "l40s", "--mfu", "0.3", "--gpus", "16",
                 "--price", "1.0", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    expected = project(PAPER_STAGES, mfu=0.3, gpu="l40s", gpus=16, price=1.0)
    assert (got["gpu"], got["gpus"], got["price"], got["mfu"]) == ("l40s", 16, 1.0, 0.3)
    assert got["total"]["dollars"] == pytest.approx(expected["total"]["dollars"])
    assert got["total"]["dollars"] == pytest.approx(got["total"]["gpu_hours"])            # at $1 per GPU-hour
    assert [r["name"] for r in got["rows"]] == ["stage1", "stage2", "stage3", "stage4"]


def test_cli_cost_defaults_to_the_paper_at_its_implied_mfu(capsys):
    assert main(["cost", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["gpu"] == "h100" and got["mfu"] == pytest.approx(paper_implied_mfu())
    assert got["total"]["dollars"] == pytest.approx(1890, rel=0.01)


@pytest.mark.parametrize("argv, message", [
    (["--gpu", "v100"], "error: gpu: unknown GPU kind 'v100'; known: a100, h100, h200, l40s"),
    (["--mfu", "0"], "error: mfu: expected a fraction in (0, 1], got 0.0"),
    (["--mfu", "45"], "error: mfu: expected a fraction in (0, 1], got 45.0 (45 % is 0.45)"),
    (["--config", "no/such.yaml"], "error: recipe: 'no/such.yaml' not found"),
])
def test_cli_cost_errors_are_one_line_naming_the_problem(capsys, argv, message):
    assert main(["cost", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


# ---------------------------------------------------------------------------------------------
#  Figures (notebook 05)
# ---------------------------------------------------------------------------------------------

def test_cost_against_mfu_has_a_line_per_gpu_and_marks_the_papers_point():
    fig = cost_vs_mfu_figure(PAPER_STAGES, mfus=[0.1, 0.2, 0.4])
    lines = [t for t in fig.data if t.mode == "lines"]
    assert [t.name.split()[0] for t in lines] == list(GPUS)
    h100 = lines[list(GPUS).index("h100")]
    assert list(h100.y) == pytest.approx([project(PAPER_STAGES, mfu=m, gpu="h100")["total"]["dollars"]
                                          for m in (0.1, 0.2, 0.4)])
    star = next(t for t in fig.data if t.mode == "markers")
    assert star.x[0] == pytest.approx(paper_implied_mfu()) and star.y[0] == 1890
    assert fig.layout.shapes[0].x0 == pytest.approx(paper_implied_mfu())              # the vertical line
    assert all("$" not in t.name and "USD" in t.name for t in fig.data)          # no TeX-looking dollars
    assert lines[1].name == "h100 at 3.79 USD/h"


def test_cost_per_stage_has_a_bar_group_per_gpu():
    fig = stage_cost_figure(PAPER_STAGES, mfu=0.45)
    assert [t.name.split(":")[0] for t in fig.data] == list(GPUS)
    for trace, name in zip(fig.data, GPUS):
        rows = project(PAPER_STAGES, mfu=0.45, gpu=name)["rows"]
        assert list(trace.x) == ["stage1", "stage2", "stage3", "stage4"]
        assert list(trace.y) == pytest.approx([r["dollars"] for r in rows])
    assert math.isclose(sum(fig.data[1].y), project(PAPER_STAGES, mfu=0.45)["total"]["dollars"])
    assert fig.data[1].name == "h100: 777 USD in all" and not any(re.search(r"\$", t.name) for t in fig.data)
