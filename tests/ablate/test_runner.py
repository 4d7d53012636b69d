"""Running suites: each variant of each built-in suite spends the budget (within 2%) and writes its metrics at
each point; a rerun trains nothing; a failed variant loses nothing; Ctrl-C and kill -9 resume; a rerun with
other settings is refused."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workbench.ablate.runner import (check_out, check_trained_with, eval_points, prepare_suite_data, run_points,
                                    run_suite, summary_table)
from workbench.ablate.suite import BUILT_IN, Suite

ROOT = Path(__file__).resolve().parents[2]
TWO = {"c_deferred_75": {"mask_ratio": 0.75}, "a_no_mask": {"mask_ratio": 0.0}}


def quick(name: str, **changes) -> Suite:
    """A built-in suite's ``quick()`` form: its variants on a few scenes, a small backbone, a 2-step protocol."""
    return dataclasses.replace(Suite.load(name).quick(), **changes)


def test_evaluation_points_are_k_over_n_of_the_budget():
    assert eval_points(900, 0.9, 4) == [250, 500, 750]               # 25/50/75% of the budget in the main phase
    assert eval_points(100, 1.0, 4) == [25, 50, 75, 100]
    suite = quick("masking")
    phases = suite.stages("c_deferred_75", 0.4e12, 0)
    points = run_points(suite, phases, 4)
    assert len(points) == 2 and points[1] == [phases[1][0].steps] and len(points[0]) == 3
    flops = [phases[0][1] * p / phases[0][0].steps for p in points[0]]
    assert flops == pytest.approx([0.1e12, 0.2e12, 0.3e12], rel=0.02)
    no_finetune = quick("recipe")
    phases = no_finetune.stages("p4", 0.4e12, 0)
    assert run_points(no_finetune, phases, 2) == [[round(phases[0][0].steps / 2), phases[0][0].steps]]


@pytest.mark.slow
@pytest.mark.parametrize("name", BUILT_IN)
def test_every_variant_spends_the_budget_within_2_percent_and_writes_its_metrics(name, tmp_path, one_thread):
    suite, budget = quick(name), (0.8e12 if name in ("recipe", "masking32") else 0.4e12)   # 32 px: bigger steps
    checkpoints = 2 if len(suite.variants) <= 4 else 1     # the large suites: one evaluation each (CI time)
    results = run_suite(suite, budget=budget, seeds=1, checkpoints=checkpoints, out=tmp_path / name, progress=False)
    assert results["failures"] == []
    for variant in suite.variants:
        rows = [r for r in results["rows"] if r["variant"] == variant]
        assert len(rows) == checkpoints and rows[-1]["train_flops"] == pytest.approx(budget, rel=0.02), variant
        per_step = rows[0]["train_flops"] / rows[0]["step"]      # a point is a whole step of the nominal share
        assert abs(rows[0]["train_flops"] - budget / checkpoints) <= max(0.02 * budget / checkpoints,
                                                                         per_step * 1.001), variant
        for row in rows:
            metrics = row["metrics"]
            assert metrics["val_loss"] > 0 and len(metrics["val_loss_by_sigma"]) == 8
            assert metrics["val_loss"] == pytest.approx(sum(metrics["val_loss_by_sigma"].values()) / 8)
            assert 0 <= metrics["shape_accuracy"] <= 1 and 0 <= metrics["colour_accuracy"] <= 1
            assert metrics["fid_proxy"] > 0
            assert 0 <= metrics["shape_probe"] <= 1 and abs(metrics["shape_gap"]) < 1.0     # a finite gap
            record = tmp_path / name / "evals" / f"{name}-{variant}-s0" / f"{row['phase']}_step_{row['step']:07d}.json"
            assert json.loads(record.read_text()) == row
    saved = json.loads((tmp_path / name / "results.json").read_text())
    assert saved["rows"] == results["rows"] and saved["suite"] == name and saved["budget"] == budget
    assert saved["protocol"]["heldout"]["sigmas"][0] == 0.02 and saved["protocol"]["compositional"]["steps"] == 2
    assert saved["protocol"]["shape_probe"]["scenes"] == 12                   # the quick protocol's probe
    assert set(saved["plan"]) == set(suite.variants)


@pytest.mark.slow
def test_a_rerun_resumes_without_training_and_a_failed_variant_loses_nothing(tmp_path, one_thread, monkeypatch):
    suite = quick("masking", variants=TWO)
    import workbench.ablate.runner as runner

    real = runner.evaluate_trainer

    def fail_for_no_mask(trainer, val, protocol):
        if "a_no_mask" in trainer.stage.run:
            raise RuntimeError("a broken variant")
        return real(trainer, val, protocol)
    monkeypatch.setattr(runner, "evaluate_trainer", fail_for_no_mask)
    first = run_suite(suite, budget=0.4e12, seeds=1, checkpoints=2, out=tmp_path, progress=False)
    assert [(f["variant"], f["error"]) for f in first["failures"]] == [("a_no_mask", "RuntimeError: a broken variant")]
    assert {r["variant"] for r in first["rows"]} == {"c_deferred_75"} and len(first["rows"]) == 2
    assert json.loads((tmp_path / "results.json").read_text())["failures"][0]["variant"] == "a_no_mask"

    monkeypatch.setattr(runner, "evaluate_trainer", real)
    from workbench.train import Trainer
    trained, opened = [], []
    monkeypatch.setattr(Trainer, "_step", lambda self, _s=Trainer._step: trained.append(self.stage.run) or _s(self))
    monkeypatch.setattr(Trainer, "__init__", lambda self, stage, _i=Trainer.__init__, **kw:
                        opened.append(stage.run) or _i(self, stage, **kw))
    second = run_suite(suite, budget=0.4e12, seeds=1, checkpoints=2, out=tmp_path, progress=False)
    assert second["failures"] == [] and {r["variant"] for r in second["rows"]} == {"c_deferred_75", "a_no_mask"}
    assert not any("c_deferred_75" in run for run in trained + opened)     # a finished run is not even opened
    assert [r for r in second["rows"] if r["variant"] == "c_deferred_75"] == first["rows"]
    trained.clear()
    third = run_suite(suite, budget=0.4e12, seeds=1, checkpoints=2, out=tmp_path, progress=False)
    assert trained == [] and third["rows"] == second["rows"]


@pytest.mark.slow
def test_ctrl_c_stops_the_suite_without_recording_an_unfinished_point(tmp_path, one_thread, monkeypatch):
    suite = quick("masking", variants={"c_deferred_75": {"mask_ratio": 0.75}})
    from workbench.train import Trainer
    real = Trainer._step                  # what run() calls each step

    def interrupted_at_step_5(self):
        if self.step_count == 5:
            self._stop.set()              # what StopOnInterrupt does on SIGINT / SIGTERM
            self.interrupted = True
        return real(self)
    monkeypatch.setattr(Trainer, "_step", interrupted_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        run_suite(suite, budget=0.4e12, seeds=1, checkpoints=2, out=tmp_path, progress=False)
    assert not list((tmp_path / "evals").rglob("*.json"))


@pytest.mark.slow
def test_kill_9_mid_suite_then_a_rerun_finishes_it_and_keeps_what_was_done(tmp_path):
    out = tmp_path / "ablate"
    suite = tmp_path / "suite.yaml"                      # the quick masking suite, two variants, as a user's file
    import yaml
    definition = quick("masking", variants=TWO).to_dict()
    suite.write_text(yaml.safe_dump(definition))
    cmd = [sys.executable, "-m", "workbench", "ablate", "--suite", str(suite), "--budget", "0.4e12", "--seeds", "1",
           "--checkpoints", "2", "--out", str(out), "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first = out / "evals" / "masking-c_deferred_75-s0"
    deadline = time.time() + 300
    while not (first.is_dir() and any(first.glob("finetune_*.json"))) and time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = {p.name: p.stat().st_mtime_ns for p in first.glob("*.json")}
    assert len(kept) == 2
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert {p.name: p.stat().st_mtime_ns for p in first.glob("*.json")} == kept      # not evaluated again
    results = json.loads((out / "results.json").read_text())
    assert len(results["rows"]) == 4 and results["failures"] == []
    assert "val_loss" in done.stdout and "a_no_mask" in done.stdout


@pytest.mark.slow
def test_jobs_2_trains_two_runs_at_once_and_its_workers_stop_when_it_is_killed(tmp_path):
    import psutil
    out, suite = tmp_path / "ablate", tmp_path / "suite.yaml"
    import yaml
    suite.write_text(yaml.safe_dump(quick("masking", variants=TWO).to_dict()))
    cmd = [sys.executable, "-m", "workbench", "ablate", "--suite", str(suite), "--budget", "0.4e12", "--seeds", "1",
           "--checkpoints", "2", "--out", str(out), "--no-progress", "--jobs", "2"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    evals, deadline = out / "evals", time.time() + 300
    try:
        while not (evals.is_dir() and any(evals.rglob("main_*.json"))) and time.time() < deadline:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            time.sleep(0.2)
        workers = psutil.Process(proc.pid).children()
        assert len(workers) >= 2, workers                  # the spawn helper may be there too
        started = {p.parent.parent.name for p in (out / "runs").glob("*/main/metrics.jsonl")}
        assert started == {"masking-c_deferred_75-s0", "masking-a_no_mask-s0"}     # both train before either ends
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    gone, alive = psutil.wait_procs(workers, timeout=60)
    assert not alive, f"workers outlived a killed workbench ablate: {alive}"
    kept = {p: p.stat().st_mtime_ns for p in evals.rglob("*.json")}
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in kept} == kept                       # not evaluated again
    results = json.loads((out / "results.json").read_text())
    assert results["failures"] == [] and len(results["rows"]) == 4
    order = list(Suite.load(str(suite)).variants)
    variants = [r["variant"] for r in results["rows"]]
    assert variants == sorted(variants, key=order.index) and set(variants) == set(order)    # the plan's order


def test_a_rerun_with_another_budget_checkpoints_or_suite_is_refused(tmp_path):
    suite = quick("masking")
    check_out(tmp_path, suite, 1e12, 4)
    check_out(tmp_path, suite, 1e12, 4)                                   # the same: fine
    check_out(tmp_path, dataclasses.replace(suite, variants={**suite.variants, "f": {"mask_ratio": 0.25}}), 1e12, 4)
    with pytest.raises(ValueError, match=r"budget 1e\+12 \(now 2e\+12\).*another --out"):
        check_out(tmp_path, suite, 2e12, 4)
    with pytest.raises(ValueError, match=r"checkpoints 4 \(now 3\)"):
        check_out(tmp_path, suite, 1e12, 3)
    with pytest.raises(ValueError, match=r"suite evaluate"):
        check_out(tmp_path, dataclasses.replace(suite, evaluate={**suite.evaluate, "steps": 3}), 1e12, 4)
    with pytest.raises(ValueError, match=r"variant a_no_mask"):
        check_out(tmp_path, dataclasses.replace(suite, variants={**suite.variants, "a_no_mask": {"mask_ratio": 0.1}}),
                  1e12, 4)
    older = tmp_path / "older"                                            # ablate.json from before the shape probe
    check_out(older, suite, 1e12, 4)
    saved = json.loads((older / "ablate.json").read_text())
    del saved["suite"]["evaluate"]["probe_n"]
    (older / "ablate.json").write_text(json.dumps(saved))
    check_out(older, suite, 1e12, 4)                                      # an added metric: it resumes
    with pytest.raises(ValueError, match=r"suite evaluate"):
        check_out(older, dataclasses.replace(suite, evaluate={**suite.evaluate, "steps": 3}), 1e12, 4)
    spelled = tmp_path / "spelled"                 # a variant that spelled the base's model_overrides out: the same
    check_out(spelled, suite, 1e12, 4)
    saved = json.loads((spelled / "ablate.json").read_text())
    variant = next(v for v, c in saved["suite"]["variants"].items() if c.get("model_overrides"))
    base_overrides = saved["suite"]["base"].get("model_overrides", {})
    saved["suite"]["variants"][variant]["model_overrides"] = {**base_overrides,
                                                              **saved["suite"]["variants"][variant]["model_overrides"]}
    (spelled / "ablate.json").write_text(json.dumps(saved))
    check_out(spelled, suite, 1e12, 4)
    legacy = tmp_path / "legacy"                                          # results.json from before ablate.json
    legacy.mkdir()
    (legacy / "results.json").write_text(json.dumps({"budget": 1e13, "checkpoints": 4, "rows": []}))
    with pytest.raises(ValueError, match=r"budget 1e\+13"):
        check_out(legacy, suite, 2e13, 4)


def test_a_run_folder_trained_with_another_recipe_is_refused(tmp_path):
    suite = quick("masking")
    stage = suite.stages("c_deferred_75", 0.4e12, 0, runs_dir=str(tmp_path))[1][0]
    check_trained_with(stage)                                             # nothing there yet
    stage.stage_dir.mkdir(parents=True)
    stage.replace(steps=stage.steps + 5, log_every=3).to_yaml(stage.stage_dir / "stage.yaml")
    check_trained_with(stage)                                             # what a resume applies is fine
    stage.replace(lr=1e-3, schedule="cosine").to_yaml(stage.stage_dir / "stage.yaml")   # the old finetune recipe
    with pytest.raises(ValueError, match=r"trained with other settings \(lr: 0\.001 -> 0\.00033.*schedule"):
        check_trained_with(stage)


def test_summary_table_flags_variants_within_each_others_spread():
    rows = [{"variant": v, "seed": s, "train_flops": 1.0, "metrics": {"val_loss": x}}
            for v, s, x in [("a", 0, 0.10), ("a", 1, 0.12), ("b", 0, 0.11), ("b", 1, 0.13), ("c", 0, 0.30),
                            ("c", 1, 0.31)]]
    rows.append({"variant": "c", "seed": 0, "train_flops": 0.5, "metrics": {"val_loss": 0.9}})   # not the final
    table = summary_table({"rows": rows}, "val_loss")
    assert [r["variant"] for r in table] == ["a", "b", "c"]
    assert table[0]["within_spread_of"] == ["b"] and table[2]["within_spread_of"] == []
    assert table[2]["mean"] == pytest.approx(0.305) and table[2]["std"] == pytest.approx(0.005)


def test_a_second_suite_run_in_the_same_folder_is_refused_while_the_first_runs(tmp_path):
    from workbench.errors import WorkbenchError
    from workbench.train.lock import StageLock

    class Running:
        running = True
    first = Running()
    lock = StageLock.acquire(tmp_path / "suite", owner=first)
    try:
        with pytest.raises(WorkbenchError, match=f"another workbench ablate is running in {tmp_path}"):
            run_suite(quick("masking"), budget=0.4e12, seeds=1, checkpoints=2, out=tmp_path, progress=False)
    finally:
        lock.release(owner=first)
    assert not (tmp_path / "ablate.json").exists()                        # refused before anything was written


def test_committed_results_load_by_name_from_any_folder_and_a_missing_one_lists_them(tmp_path, monkeypatch):
    from workbench.ablate.runner import load_results, shipped_results

    monkeypatch.chdir(tmp_path)
    assert {"masking-20T", "moe-20T"} <= set(shipped_results())
    committed = load_results("masking-20T")
    assert committed["suite"] == "masking" and committed["seeds"] == 2 and not committed["failures"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "results.json").write_text(json.dumps({"suite": "mine", "rows": []}))
    assert load_results("mine")["suite"] == "mine" == load_results(tmp_path / "mine" / "results.json")["suite"]
    with pytest.raises(FileNotFoundError, match="no ablation results at nope: .*masking-20T"):
        load_results("nope")


def test_spread_rows_give_mean_min_max_per_variant_and_what_overlaps():
    from workbench.ablate.runner import spread_rows

    rows = [{"variant": v, "seed": s, "train_flops": 1.0, "metrics": {"val_loss": x, "fid_proxy": 10 * x}}
            for v, s, x in [("a", 0, 0.30), ("a", 1, 0.34), ("b", 0, 0.32), ("b", 1, 0.36), ("c", 0, 0.1),
                            ("c", 1, 0.11)]]
    a, c = spread_rows({"rows": rows}, variants=("a", "c", "missing"))
    assert a == {"variant": "a", "val_loss": "0.32 [0.3, 0.34]", "val_loss: not told apart from": "none",
                 "fid_proxy": "3.2 [3, 3.4]", "fid_proxy: not told apart from": "none", "seeds": 2}
    assert c["variant"] == "c"
    assert spread_rows({"rows": rows})[0]["val_loss: not told apart from"] == "b"   # b overlaps a when listed


def test_only_keeps_the_named_variants_and_run_dir_is_the_last_phase(tmp_path):
    from workbench.ablate.runner import run_dir

    two = Suite.load("masking").only("c_deferred_75", "b_naive_75")
    assert list(two.variants) == ["c_deferred_75", "b_naive_75"] and two.base == Suite.load("masking").base
    with pytest.raises(ValueError, match="no variant 'nope' .*it has a_no_mask"):
        Suite.load("masking").only("nope")
    assert run_dir(two, "b_naive_75", 1, 1e12, tmp_path) == tmp_path / "runs" / "masking-b_naive_75-s1" / "finetune"


def test_a_suites_template_weights_set_the_training_mix_and_leave_the_held_out_scenes_alone(tmp_path, one_thread):
    import datasets

    from workbench.data.shapes import make_scenes

    suite = dataclasses.replace(quick("optim"), data={"n": 12, "val_n": 6, "resolution": 32},
                                variants={"singles": {"template_weights": {"single": 1.0}}, "base": {}})
    assert suite.training_mix("singles") == {"single": 1.0} and suite.training_mix("base") is None
    assert "template_weights" not in suite.stage_fields("singles", 0)
    train, val = prepare_suite_data(suite, tmp_path, progress=False, mix=suite.training_mix("singles"))
    assert train.name == "train_12_single1"
    singles = [s.caption for s in make_scenes(12, "train", template_weights={"single": 1.0})]
    assert datasets.load_from_disk(str(train))["caption"] == singles
    assert datasets.load_from_disk(str(val))["caption"] == [s.caption for s in make_scenes(6, "val")]
    assert singles != [s.caption for s in make_scenes(12, "train")]       # the mix changed what was prepared
