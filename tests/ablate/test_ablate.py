"""``workbench ablate``: every variant of each built-in suite spends the same training FLOPs (within 2%), each
writes its metrics at each evaluation point, a rerun resumes without training, and one failure loses nothing."""

from __future__ import annotations

import dataclasses
import json

import pytest

from workbench.ablate.runner import run_suite, summary_table
from workbench.ablate.suite import BUILT_IN, Suite
from workbench.cli import main

def quick(name: str) -> Suite:
    """A built-in suite's ``quick()`` form: its variants on a few scenes, a small backbone, a 2-step protocol."""
    return Suite.load(name).quick()


@pytest.mark.slow
@pytest.mark.parametrize("name", BUILT_IN)
def test_every_variant_spends_the_budget_within_2_percent_and_writes_its_metrics(name, tmp_path, one_thread):
    suite, budget = quick(name), (0.4e12 if name != "recipe" else 1.2e12)
    results = run_suite(suite, budget=budget, seeds=1, checkpoints=2, out=tmp_path / name, progress=False)
    assert results["failures"] == []
    finals = {r["variant"]: r for r in results["rows"] if r["train_flops"] == max(
        x["train_flops"] for x in results["rows"] if x["variant"] == r["variant"])}
    assert set(finals) == set(suite.variants)
    for variant, row in finals.items():
        assert row["train_flops"] == pytest.approx(budget, rel=0.02), variant
        metrics = row["metrics"]
        assert metrics["val_loss"] > 0 and len(metrics["val_loss_by_sigma"]) == 8
        assert 0 <= metrics["shape_accuracy"] <= 1 and 0 <= metrics["colour_accuracy"] <= 1
        assert metrics["fid_proxy"] is not None
    assert all(len([r for r in results["rows"] if r["variant"] == v]) == 2 for v in suite.variants)
    saved = json.loads((tmp_path / name / "results.json").read_text())
    assert saved["rows"] == results["rows"] and saved["suite"] == name


@pytest.mark.slow
def test_a_rerun_resumes_without_training_and_a_failed_variant_loses_nothing(tmp_path, one_thread, monkeypatch):
    suite = dataclasses.replace(quick("masking"), variants={"c_deferred_75": {"mask_ratio": 0.75},
                                                            "a_no_mask": {"mask_ratio": 0.0}})
    import workbench.ablate.runner as runner

    real = runner.evaluate_trainer

    def fail_for_no_mask(trainer, val, protocol):
        if "a_no_mask" in trainer.stage.run:
            raise RuntimeError("a broken variant")
        return real(trainer, val, protocol)
    monkeypatch.setattr(runner, "evaluate_trainer", fail_for_no_mask)
    first = run_suite(suite, budget=0.4e12, seeds=1, checkpoints=2, out=tmp_path, progress=False)
    assert [f["variant"] for f in first["failures"]] == ["a_no_mask"]
    assert {r["variant"] for r in first["rows"]} == {"c_deferred_75"}

    monkeypatch.setattr(runner, "evaluate_trainer", real)
    trained = []
    from workbench.train import Trainer
    monkeypatch.setattr(Trainer, "step", lambda self, _s=Trainer.step: trained.append(self.stage.run) or _s(self))
    second = run_suite(suite, budget=0.4e12, seeds=1, checkpoints=2, out=tmp_path, progress=False)
    assert second["failures"] == [] and {r["variant"] for r in second["rows"]} == {"c_deferred_75", "a_no_mask"}
    assert not any("c_deferred_75" in run for run in trained)          # finished runs and evaluations are skipped
    assert [r for r in second["rows"] if r["variant"] == "c_deferred_75"] == first["rows"]


def test_a_suite_file_with_an_unknown_key_or_a_bad_variant_is_refused(tmp_path):
    bad = tmp_path / "suite.yaml"
    bad.write_text("name: x\nvariants: {a: {}}\nbudgte: 3\n")
    with pytest.raises(ValueError, match="did you mean 'budget'|has no field 'budgte'"):
        Suite.load(bad)
    bad.write_text("name: x\nvariants: {a: {mask_ratio: 2.0}}\n")
    with pytest.raises(ValueError, match=r"Stage\.mask_ratio"):
        Suite.load(bad)
    with pytest.raises(FileNotFoundError, match="masking, moe, recipe"):
        Suite.load("nonexistent")


def test_summary_table_flags_variants_within_each_others_spread():
    rows = [{"variant": v, "seed": s, "train_flops": 1.0, "metrics": {"val_loss": x}}
            for v, s, x in [("a", 0, 0.10), ("a", 1, 0.12), ("b", 0, 0.11), ("b", 1, 0.13), ("c", 0, 0.30),
                            ("c", 1, 0.31)]]
    table = summary_table({"rows": rows}, "val_loss")
    assert [r["variant"] for r in table] == ["a", "b", "c"]
    assert table[0]["within_spread_of"] == ["b"] and table[2]["within_spread_of"] == []


def test_the_cli_redraws_a_report_from_results_json(tmp_path, capsys):
    rows = [{"suite": "s", "variant": v, "seed": 0, "phase": "main", "step": 1, "train_flops": f,
             "metrics": {"val_loss": x, "shape_accuracy": 0.2, "colour_accuracy": 0.9, "fid_proxy": 10.0}}
            for v, f, x in [("a", 1e12, 0.3), ("a", 2e12, 0.2), ("b", 1e12, 0.4), ("b", 2e12, 0.35)]]
    (tmp_path / "results.json").write_text(json.dumps({"suite": "s", "budget": 2e12, "seeds": 1, "rows": rows,
                                                       "failures": []}))
    assert main(["ablate", "--report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "val_loss         a" in out and (tmp_path / "val_loss.svg").read_text().startswith("<svg")
    assert "plotly" in (tmp_path / "figures.html").read_text()
