"""The benchmarks run end to end on tiny settings and report what they promise (no timing targets here)."""

from __future__ import annotations

import json

import pytest

from tests.train.conftest import shapes_data  # noqa: F401  (fixtures)
from workbench.bench.data import bench_data
from workbench.bench.model import bench_model
from workbench.bench.train import bench_train
from workbench.cli import main


def test_bench_model_reports_each_mask_ratio_and_the_masking_speedup(one_thread):  # noqa: F811
    report = bench_model(presets=("nano",), batch=2, latent_size=16, repeats=1, progress=lambda _: None)
    rows = report["results"]
    assert [(r["preset"], r["mask_ratio"]) for r in rows] == [("nano", 0.0), ("nano", 0.75)]
    assert all(r["ms_per_step"] > 0 and r["img_per_s"] > 0 and r["train_gflop_per_step"] > 0 for r in rows)
    assert rows[1]["train_gflop_per_step"] < rows[0]["train_gflop_per_step"]      # masking removes backbone work
    assert rows[1]["theoretical_speedup"] > 1 and rows[1]["realised_speedup"] > 0
    assert report["compile"] is False and report["environment"]["torch"]


def test_bench_train_on_a_given_prepared_dataset(shapes_data, one_thread):  # noqa: F811
    lines = []
    report = bench_train(presets=("nano",), mask_ratios=(0.75,), batch=4, resolution=16, steps=3, rounds=1,
                         data=shapes_data, progress=lines.append)
    (row,) = report["results"]
    assert row["preset"] == "nano" and row["mask_ratio"] == 0.75 and row["img_per_s"] > 0
    assert row["ms_per_step"] == pytest.approx(1000 * 4 / row["img_per_s"], rel=0.01)
    assert "nano mask 0.75" in lines[0]


def test_bench_cli_presets_and_json(tmp_path, capsys, one_thread):  # noqa: F811
    out = tmp_path / "model.json"
    assert main(["bench", "model", "--presets", "nano", "--batch", "2", "--latent-size", "16", "--repeats", "1",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert {r["preset"] for r in report["results"]} == {"nano"} and report["batch"] == 2
    assert '"benchmark": "model"' in capsys.readouterr().out             # the report is printed too


def test_bench_memory_reports_rss_growth_after_warmup_within_its_bound(one_thread):  # noqa: F811
    """The quick variant of docs/benchmarks.md's 1,000-step run: nano, 60 steps with checkpoints and grids."""
    from workbench.bench.memory import bench_memory

    report = bench_memory(preset="nano", steps=60, warmup=20, every=5, batch=4, checkpoint_every=20,
                          sample_every=20, bound_mb=64, progress=lambda _: None)
    steps = [step for step, _ in report["samples"]]
    assert steps[0] == 1 and steps[-1] == 60 and all(rss > 50 for _, rss in report["samples"])
    assert report["rss_mb_after_warmup"] == dict(report["samples"])[20]
    assert report["growth_mb"] == pytest.approx(report["rss_mb_final"] - report["rss_mb_after_warmup"], abs=0.11)
    assert report["within_bound"], report["samples"]


def test_bench_data_reports_rendering_prepare_and_loader_rates(one_thread):  # noqa: F811
    lines = []
    report = bench_data(n=16, resolution=16, batch_size=4, prepare_batch_size=8, loader_batches=10, nano_steps=1,
                        progress=lines.append)
    render = report["shapes_render"]
    assert render["n"] == 200 and render["resolution"] == 16 and 1 <= render["mean_objects"] <= 4
    assert render["images_per_s"] * render["seconds"] == pytest.approx(200, rel=1e-6)
    assert report["prepare"]["images"] == 16 and report["prepare"]["images_per_s"] > 0
    assert report["loader"]["images_per_s"] > 0 and report["loader_over_nano"] > 0
    assert lines[0].startswith("shapes rendering: ") and any(line.startswith("loader: ") for line in lines)
