"""Running a suite: every (variant, seed) trained to the same FLOP budget, scored at fixed fractions of it.

Resumable like the pipeline: each run is a pair of Trainer stage folders under ``<out>/runs`` (a rerun
resumes them from their newest checkpoint, written every ~1/8 of a phase), and each evaluation is a JSON
file under ``<out>/evals`` written atomically (a rerun skips it; a run whose evaluations are all there is
not even opened). A variant that fails is recorded with its error and the others go on; the next rerun
tries it again. ``<out>/ablate.json`` pins the budget, the checkpoints and the suite, so a rerun with
other settings is refused instead of mixing two experiments. ``results.json`` is rewritten after every
run. ``jobs=N`` trains N runs at once, each in its own process with 1/N of the cores (on a small CPU two
one-thread processes outrun one two-thread process and are not slowed by each other; docs/benchmarks.md,
"Contention")::

    results = run_suite(Suite.load("masking"), budget=20e12, seeds=2, checkpoints=4, out="runs/ablate/masking")
    results["rows"][0]   # {"suite", "variant", "seed", "step", "phase", "train_flops", "metrics": {...}}
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..diffusion import DEFAULT_SAMPLER
from ..io import atomic_write_json
from .suite import Suite
from ..errors import InputError, MissingFileError

BUDGET_TOLERANCE = 0.02       # every run of a suite spends its budget within 2% (tests/ablate/test_suite.py)

FLOPS = "workbench.eval.cost: 3 x MicroDiT.flops (analytic forward FLOPs at the stage's mask ratio) per step"


def prepare_suite_data(suite: Suite, out: Path, progress: bool = True,
                       mix: dict | None = None) -> tuple[Path, Path]:
    """The suite's training scenes and held-out scenes (shapes train / val split), prepared once under ``out``
    with the same codec (pixels), text encoder and settings, so the val latents match the training ones.
    ``mix`` (a variant's ``template_weights``) changes the training scenes only."""
    from ..data.prepare import prepare

    spec, root = suite.data, out / "data"
    mix_name = "".join(f"_{template}{weight:g}" for template, weight in sorted(mix.items())) if mix else ""
    train, val = root / f"train_{spec['n']}{mix_name}", root / f"val_{spec['val_n']}"
    for source, path, n, weights in (("shapes", train, spec["n"], mix), ("shapes:val", val, spec["val_n"], None)):
        prepare(source=source, out=path, resolutions=(spec["resolution"],), limit=int(n), n=int(n),
                template_weights=weights, text_encoder_options={"trim_padding": True}, progress=progress)
    return train, val


def protocol(suite: Suite) -> dict:
    """How every number of a suite was made (``results.json``'s ``protocol``)."""
    from ..eval.heldout import protocol as heldout_protocol
    from ..eval.shape_probe import protocol as shape_probe_protocol

    e = suite.evaluate
    return {"training_flops": FLOPS, "data": suite.data, "finetune": suite.finetune,
            "heldout": heldout_protocol(min(e["val_n"], suite.data["val_n"])),
            "compositional": {"prompts": 55, "samples_per_prompt": e["samples_per_prompt"], "steps": e["steps"],
                              "sampler": DEFAULT_SAMPLER, "cfg_scale": e["cfg_scale"], "seed": 0,
                              "weights": "EMA when kept"},
            "shape_probe": shape_probe_protocol(e["probe_n"]) if e["probe_n"] else None,
            "fid_proxy": {"samples": e["fid_samples"], "reference": "2000 val-split renders", "steps": e["steps"],
                          "cfg_scale": e["cfg_scale"], "note": "biased upwards at few samples: compare equal counts"}}


def evaluate_trainer(trainer, val: Path, protocol: dict) -> dict:
    """Held-out loss (per σ and mean), the shape probe, compositional accuracies and the FID-proxy of a trainer's
    sampling model."""
    from ..eval.compositional import evaluate_sampler, summarise
    from ..eval.fid import add_generated, fid_proxy_metric
    from ..eval.heldout import model_heldout_loss
    from ..eval.shape_probe import bundle_shape_probe
    from ..train.inference import bundle_for_trainer

    stage, t0 = trainer.stage, time.perf_counter()
    heldout = model_heldout_loss(trainer.sampling_model(), val, stage.resolution, stage.sigma_data,
                                 n=protocol.get("val_n", 256))
    t1, bundle, probe = time.perf_counter(), bundle_for_trainer(trainer), None
    if protocol.get("probe_n"):
        probe = bundle_shape_probe(bundle, n=protocol["probe_n"])
    t_probe = time.perf_counter()
    results, _ = evaluate_sampler(bundle, protocol["samples_per_prompt"], protocol["steps"], protocol["cfg_scale"],
                                  progress=False)
    scores = summarise(results)
    t2 = time.perf_counter()
    metrics = {"val_loss": heldout["mean"], "val_loss_by_sigma": heldout["by_sigma"],
               "shape_accuracy": scores["attributes"]["shape"], "colour_accuracy": scores["attributes"]["colour"],
               "single_object_shape": scores["single_object_shape"], "overall": scores["overall"],
               "shape_probe": probe and probe["accuracy"], "shape_gap": probe and probe["gap"], "fid_proxy": None}
    if protocol.get("fid_samples"):
        metric = fid_proxy_metric(stage.resolution)
        add_generated(metric, bundle, protocol["fid_samples"], protocol["steps"], protocol["cfg_scale"], progress=False)
        metrics["fid_proxy"] = float(metric.compute())
    metrics["seconds"] = {"val_loss": round(t1 - t0, 2), "shape_probe": round(t_probe - t1, 2),
                          "compositional": round(t2 - t_probe, 2),
                          "fid_proxy": round(time.perf_counter() - t2, 2)}
    return metrics


def eval_points(steps: int, share: float, checkpoints: int) -> list[int]:
    """Steps of the main phase at which the budget reaches k / checkpoints (k = 1..), within its ``share``."""
    points = []
    for k in range(1, checkpoints + 1):
        fraction = k / checkpoints
        if fraction <= share + 1e-9:
            points.append(max(1, round(steps * fraction / share)))
    return sorted(set(points))


def run_points(suite: Suite, phases: list, checkpoints: int) -> list[list[int]]:
    """Per phase, the steps evaluated: k/N of the budget in the main phase, and every phase's end but the main
    one's when a finetune follows (its end is not a k/N point)."""
    points = [eval_points(phases[0][0].steps, 1.0 - suite.finetune, checkpoints)]
    if len(phases) == 1:
        points[0] = sorted(set(points[0]) | {phases[0][0].steps})
    return points + [[stage.steps] for stage, _ in phases[1:]]


def run_dir(suite: Suite, variant: str, seed: int, budget: float, out: str | Path) -> Path:
    """The stage folder of a run's last phase (its final model), e.g. for ``MaskExplorer`` or ``SamplerPanel``::

        MaskExplorer(run_dir(suite, "c_deferred_75", 0, 20e12, "runs/ablate/masking"))
    """
    stage, _ = suite.stages(variant, budget, seed, runs_dir=str(Path(out) / "runs"))[-1]
    return stage.stage_dir


def record_path(out: Path, stage, step: int) -> Path:
    """Where the evaluation of ``stage`` at ``step`` is kept."""
    return out / "evals" / stage.run / f"{stage.name}_step_{step:07d}.json"


def run_variant(suite: Suite, variant: str, seed: int, budget: float, checkpoints: int, out: Path, train: Path,
                val: Path, bar) -> list[dict]:
    """Train one (variant, seed) through its phases, evaluating at each point; returns its result rows."""
    phases = suite.stages(variant, budget, seed, runs_dir=str(out / "runs"), data=str(train))
    points = run_points(suite, phases, checkpoints)
    records = [[record_path(out, stage, step) for step in steps] for (stage, _), steps in zip(phases, points)]
    for stage, _ in phases:
        check_trained_with(stage)
    if all(r.is_file() for phase in records for r in phase):      # finished: nothing to open
        bar.update(sum(map(len, records)))
        return [json.loads(r.read_text()) for phase in records for r in phase]
    from ..train import Trainer

    rows, spent = [], 0.0
    for (stage, flops), steps, paths in zip(phases, points, records):
        per_step = flops / stage.steps
        trainer = Trainer(stage, progress=False)
        try:
            for step, record in zip(steps, paths):
                if not record.is_file():
                    if trainer.step_count > step:
                        raise RuntimeError(f"{stage.run}/{stage.name} is at step {trainer.step_count}, past the "
                                           f"evaluation at step {step} (its record was removed?); remove {stage.run} "
                                           f"from {out / 'runs'} to train it again")
                    t0 = time.perf_counter()
                    trainer.run(steps=step - trainer.step_count)
                    if trainer.interrupted or trainer.step_count < step:     # Ctrl-C / SIGTERM: stop the suite
                        raise KeyboardInterrupt
                    t1 = time.perf_counter()
                    metrics = evaluate_trainer(trainer, val, suite.evaluate)
                    row = {"suite": suite.name, "variant": variant, "seed": seed, "phase": stage.name, "step": step,
                           "train_flops": spent + step * per_step, "metrics": metrics,
                           "train_seconds": round(t1 - t0, 1), "eval_seconds": round(time.perf_counter() - t1, 1)}
                    atomic_write_json(record, row)
                    tqdm.write(log_line(row))
                rows.append(json.loads(record.read_text()))
                bar.update(1)
            if trainer.step_count < stage.steps:             # the main phase runs to its end before a finetune
                trainer.run()
                if trainer.interrupted or trainer.step_count < stage.steps:
                    raise KeyboardInterrupt
        finally:
            trainer.close()
        spent += flops
    return rows


def check_trained_with(stage) -> None:
    """Refuse a run folder trained with other settings than ``stage`` (an edited suite): its evaluations, and
    a resume, would silently stand for the old recipe. Changes a resume applies (steps, logging) are allowed."""
    from ..config import parse_yaml
    from ..train.resume import stage_changes

    saved = stage.stage_dir / "stage.yaml"
    if saved.is_file():
        _, refused = stage_changes(parse_yaml(saved.read_text()) or {}, stage.to_dict())
        if refused:
            fields = "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in refused)
            raise InputError(f"{stage.stage_dir} was trained with other settings ({fields}); remove "
                             f"{stage.stage_dir.parent} (and its evals) to train it with the suite's, or use another "
                             f"--out")


def log_line(row: dict) -> str:
    """One line per evaluation, for logs of headless runs."""
    m = row["metrics"]
    fid = "-" if m.get("fid_proxy") is None else f"{m['fid_proxy']:.1f}"
    probe = "" if m.get("shape_probe") is None else f" probe {m['shape_probe']:.3f} gap {m['shape_gap']:+.5f}"
    return (f"{row['suite']} {row['variant']} seed {row['seed']} {row['phase']} step {row['step']} "
            f"({row['train_flops'] / 1e12:.2f} TFLOP): val_loss {m['val_loss']:.4f}{probe} "
            f"shape {m['shape_accuracy']:.3f} "
            f"colour {m['colour_accuracy']:.3f} fid_proxy {fid} (train {row['train_seconds']} s, eval "
            f"{row['eval_seconds']} s)")


def _effective(definition: dict, variant: str) -> dict:
    """A variant's fields as it trains: the base, then its changes, ``model_overrides`` merged (so a definition
    that spells the base's overrides out in the variant is the same experiment as one that inherits them)."""
    base, changes = definition.get("base", {}), definition["variants"][variant] or {}
    return {**base, **changes, "model_overrides": {**base.get("model_overrides", {}),
                                                   **changes.get("model_overrides", {})}}


def check_out(out: Path, suite: Suite, budget: float, checkpoints: int) -> None:
    """Refuse to resume ``out`` with another budget, checkpoints or suite (variants may be added); record them."""
    path, legacy = out / "ablate.json", out / "results.json"
    saved = json.loads(path.read_text()) if path.is_file() else None
    if saved is None and legacy.is_file():                    # written before ablate.json existed
        old = json.loads(legacy.read_text())
        saved = {"budget": old.get("budget"), "checkpoints": old.get("checkpoints"), "suite": None}
    if saved is not None:
        changed = [f"{key} {saved[key]:g} (now {now:g})" for key, now in (("budget", budget),
                                                                          ("checkpoints", checkpoints))
                   if saved.get(key) is not None and not math.isclose(saved[key], now, rel_tol=1e-9)]
        old_suite, new_suite = saved.get("suite"), suite.to_dict()
        if old_suite is not None:   # an evaluation setting added since (e.g. probe_n) adds a metric, changes none
            old_suite = {**old_suite, "evaluate": {**new_suite["evaluate"], **old_suite.get("evaluate", {})}}
            changed += [f"suite {key}" for key in new_suite
                        if key != "variants" and old_suite.get(key) != new_suite[key]]
            changed += [f"variant {v}" for v in old_suite.get("variants", {})
                        if v in new_suite["variants"] and _effective(old_suite, v) != _effective(new_suite, v)]
        if changed:
            raise InputError(f"ablate: {out} holds another experiment ({'; '.join(changed)}; see {path}): rerun "
                             f"with its settings to resume it, or give another --out")
    if saved is None or saved.get("suite") != suite.to_dict():
        atomic_write_json(path, {"budget": budget, "checkpoints": checkpoints, "suite": suite.to_dict()})


def run_suite(suite: Suite, budget: float, seeds: int = 2, checkpoints: int = 4, out: str | Path = "runs/ablate",
              progress: bool = True, command: str | None = None, jobs: int = 1) -> dict:
    """Run every variant of ``suite`` with seeds 0..seeds-1 at ``budget`` training FLOPs; write ``results.json``.
    ``jobs`` runs train at once, each in a process of its own with ``os.cpu_count() // jobs`` torch threads."""
    if seeds < 1 or checkpoints < 1 or not budget > 0 or jobs < 1:
        raise InputError(f"ablate: --seeds, --checkpoints and --jobs must be >= 1 and --budget > 0 (got {seeds}, "
                         f"{checkpoints}, {jobs}, {budget:g})")
    out = Path(out)
    holder = _SuiteRun()
    lock = holder.lock(out)
    try:
        return _run_suite(suite, budget, seeds, checkpoints, out, progress, command, jobs)
    finally:
        lock.release(owner=holder)


class _SuiteRun:
    """The owner of ``<out>/.suite.lock`` while a suite runs: one ``workbench ablate`` per output folder."""

    running = True

    def lock(self, out: Path):
        from ..errors import WorkbenchError
        from ..train.lock import StageLock

        try:
            return StageLock.acquire(out / "suite", owner=self, log=tqdm.write)
        except WorkbenchError as err:
            raise WorkbenchError(f"another workbench ablate is running in {out}: {err}") from None


def _run_suite(suite: Suite, budget: float, seeds: int, checkpoints: int, out: Path, progress: bool,
               command: str | None, jobs: int) -> dict:
    check_out(out, suite, budget, checkpoints)
    data = {v: prepare_suite_data(suite, out, progress=False, mix=suite.training_mix(v)) for v in suite.variants}
    runs = [(v, s) for v in suite.variants for s in range(seeds)]
    plan = {v: [{"phase": st.name, "steps": st.steps, "flops": f} for st, f in suite.stages(v, budget, 0)]
            for v in suite.variants}
    total = sum(len(p) for v, _ in runs for p in run_points(suite, suite.stages(v, budget, 0), checkpoints))
    bar = tqdm(total=total, desc=f"ablate {suite.name}", unit="eval", disable=not progress, dynamic_ncols=True)
    done, failures, t0 = {}, [], time.perf_counter()
    results = {}
    try:
        for (variant, seed), rows, failure in _train_runs(suite, runs, budget, checkpoints, out, data, bar, jobs):
            if failure is None:
                done[variant, seed] = rows
            else:
                failures.append({"variant": variant, "seed": seed, **failure})
                tqdm.write(f"ablate {suite.name}: {variant} seed {seed} failed: {failure['error']}")
            results = {"suite": suite.name, "budget": budget, "seeds": seeds, "checkpoints": checkpoints,
                       "command": command, "protocol": protocol(suite), "plan": plan, "definition": suite.to_dict(),
                       "rows": [row for run in runs for row in done.get(run, [])],        # in the plan's order
                       "failures": failures, "seconds": round(time.perf_counter() - t0, 1)}
            atomic_write_json(out / "results.json", results)
    finally:
        bar.close()
    return results


def _failure(err: BaseException) -> dict:
    return {"error": f"{type(err).__name__}: {err}", "traceback": "".join(traceback.format_exception(err, limit=8))}


def _train_runs(suite, runs, budget, checkpoints, out, data, bar, jobs):
    """Yield ``((variant, seed), rows, failure)`` per run as each ends: in order in this process (``jobs`` 1), or
    ``jobs`` at a time in worker processes. One failed run must not lose the others."""
    if jobs == 1:
        for variant, seed in runs:
            bar.set_postfix_str(f"{variant} seed {seed}")
            try:
                rows = run_variant(suite, variant, seed, budget, checkpoints, out, *data[variant], bar)
            except Exception as err:  # noqa: BLE001
                yield (variant, seed), None, _failure(err)
                continue
            yield (variant, seed), rows, None
        return
    threads = max(1, (os.cpu_count() or 1) // jobs)
    pool = ProcessPoolExecutor(min(jobs, len(runs)), mp_context=get_context("spawn"), initializer=_start_worker,
                               initargs=(os.getpid(), threads))
    try:
        futures = {pool.submit(_run_in_worker, suite, v, s, budget, checkpoints, out, *data[v]): (v, s)
                   for v, s in runs}
        bar.set_postfix_str(f"{len(runs)} runs, {jobs} at a time")
        for future in as_completed(futures):
            try:
                rows = future.result()
            except Exception as err:  # noqa: BLE001
                yield futures[future], None, _failure(err)
                continue
            bar.update(len(rows))
            yield futures[future], rows, None
    finally:                       # Ctrl-C reaches the workers too (they stop their Trainers); start no more runs
        pool.shutdown(wait=True, cancel_futures=True)


class _NoBar:
    """``run_variant``'s progress bar inside a worker process (the parent counts finished runs)."""

    def update(self, n: int = 1) -> None:
        pass


_IDLE = threading.Event()           # in a worker process: set while it trains no run
_IDLE.set()


def _run_in_worker(suite, variant, seed, budget, checkpoints, out, train, val) -> list[dict]:
    """One run in a worker process of ``jobs > 1``; its evaluations are logged as they are written."""
    _IDLE.clear()
    try:
        return run_variant(suite, variant, seed, budget, checkpoints, out, train, val, _NoBar())
    finally:
        _IDLE.set()


def _start_worker(parent: int, threads: int) -> None:
    """In a worker: train on ``threads`` threads, and when ``workbench ablate`` is gone (killed), stop as a plain
    SIGTERM stops a run (the Trainer checkpoints and returns), then exit, instead of training on as an orphan
    that holds the run's lock."""
    import torch

    torch.set_num_threads(threads)

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        if not _IDLE.is_set():
            os.kill(os.getpid(), signal.SIGTERM)
            _IDLE.wait(timeout=600)
        os._exit(128 + signal.SIGTERM)
    threading.Thread(target=watch, daemon=True, name="stop-with-parent").start()


def summary_table(results: dict, metric: str = "val_loss") -> list[dict]:
    """Per variant at the final budget: mean, min, max of ``metric`` over seeds, sorted by the mean, and which
    other variants overlap its [min, max] range (``within_spread_of``: a difference the seeds cannot resolve)."""
    final, merged = {}, "merged_from" in results
    for row in results["rows"]:              # merged results compare at their common (smallest) budget only
        if merged and abs(row["train_flops"] - results["budget"]) > BUDGET_TOLERANCE * results["budget"]:
            continue
        key = (row["variant"], row["seed"])
        if key not in final or row["train_flops"] > final[key]["train_flops"]:
            final[key] = row
    table = []
    for variant in dict.fromkeys(v for v, _ in final):
        values = [r["metrics"].get(metric) for (v, _), r in final.items() if v == variant]
        values = [x for x in values if x is not None]
        if values:
            table.append({"variant": variant, "mean": float(np.mean(values)), "min": float(min(values)),
                          "max": float(max(values)), "std": float(np.std(values)), "seeds": len(values)})
    table.sort(key=lambda r: r["mean"])
    for row in table:
        row["within_spread_of"] = [o["variant"] for o in table if o is not row and
                                   not (row["max"] < o["min"] or o["max"] < row["min"])]
    return table


def spread_rows(results: dict, metrics: tuple[str, ...] = ("val_loss", "fid_proxy"),
                variants: tuple[str, ...] | None = None) -> list[dict]:
    """One row per variant (in ``variants`` order, default the suite's) at the final budget: each metric's mean
    [min, max] over seeds, and the variants whose range overlaps (not told apart). Rows for ``table_html``::

        HTML(table_html(spread_rows(load_results("masking-20T"), variants=("b_naive_75", "c_deferred_75"))))
    """
    tables = {metric: {row["variant"]: row for row in summary_table(results, metric)} for metric in metrics}
    present = tuple(dict.fromkeys(r["variant"] for r in results["rows"]))
    names = tuple(v for v in variants if v in present) if variants else present
    rows = []
    for variant in names:
        row = {"variant": variant}
        for metric, table in tables.items():
            t = table.get(variant)
            if t is None:
                row[metric] = "n/a"
                continue
            row[metric] = f"{t['mean']:.4g} [{t['min']:.4g}, {t['max']:.4g}]"
            close = [o for o in t["within_spread_of"] if o in names]
            row[f"{metric}: not told apart from"] = ", ".join(close) or "none"
        row["seeds"] = max((table[variant]["seeds"] for table in tables.values() if variant in table), default=0)
        rows.append(row)
    return rows


def shipped_results_dir() -> Path:
    """The committed ablation results (``docs/ablations/<name>/results.json``; ``workbench/ablations`` in a wheel)."""
    from ..config import shipped_dir

    return shipped_dir("ablations", "docs/ablations")


def shipped_results() -> list[str]:
    """Names of the committed ablation results, e.g. ``["masking-10T", "masking-20T", "moe-20T"]``."""
    root = shipped_results_dir()
    return sorted(p.parent.name for p in root.glob("*/results.json")) if root.is_dir() else []


def load_results(spec: str | Path) -> dict:
    """An ablation's ``results.json``: a file, an output folder holding one, or a committed result by name::

        results = load_results("masking-20T")            # the committed 20 TFLOP masking suite (docs/ablations.md)
        results = load_results("runs/ablate/masking")    # your own run
    """
    path = Path(spec).expanduser()
    for candidate in (path, path / "results.json", shipped_results_dir() / str(spec) / "results.json"):
        if candidate.is_file():
            return json.loads(candidate.read_text())
    raise MissingFileError(f"no ablation results at {spec}: give a results.json, a `workbench ablate --out` folder, "
                           f"or a committed result ({', '.join(shipped_results()) or 'none shipped'})")


def load_or_run(suite: Suite, budget: float, seeds: int, checkpoints: int, out: str | Path, run: bool,
                results: str | Path | None = None, jobs: int = 1) -> dict | None:
    """Run (or resume) ``suite`` into ``out`` when ``run``; else read ``results`` (default ``out``; a committed
    result by name works too, see :func:`load_results`). None, with a line saying how to make them, when there
    are none yet. What notebook 06 calls."""
    if run:
        return run_suite(suite, budget, seeds, checkpoints, out, jobs=jobs)
    try:
        return load_results(results or out)
    except MissingFileError:
        print(f"no results in {results or out} yet: run `workbench ablate --suite {suite.name} --budget {budget:g} "
              f"--seeds {seeds} --out {out}`, or set run = True (committed results: {', '.join(shipped_results())})")
        return None


def merge_results(named: dict[str, dict]) -> dict:
    """Several ablations' results as one, to put recipes from different suites or sessions on one set of curves::

        merged = merge_results({"scale-60T": load_results("scale-60T"), "mine": load_results("runs/ablate/x")})
        write_report(merged, "runs/ablate/compare")      # what ``workbench ablate --report A B --out DIR`` does

    A variant keeps its name unless another folder has one of the same name; then each becomes
    ``<folder>/<variant>``. The curves keep every point; the table compares the variants at the smallest of the
    budgets (``budget``), leaving out a variant with no evaluation within 2% of it."""
    if len(named) < 2:
        raise InputError("merge_results: give two or more results to merge")
    counts: dict = {}
    for results in named.values():
        for variant in dict.fromkeys(r["variant"] for r in results["rows"]):
            counts[variant] = counts.get(variant, 0) + 1
    def name(folder: str, variant: str) -> str:
        return f"{folder}/{variant}" if counts.get(variant, 0) > 1 else variant
    rows, failures = [], []
    for folder, results in named.items():
        rows += [{**row, "variant": name(folder, row["variant"])} for row in results["rows"]]
        failures += [{**f, "variant": name(folder, f["variant"])} for f in results.get("failures", [])]
    return {"suite": " + ".join(named), "budget": min(r["budget"] for r in named.values()),
            "seeds": min(r["seeds"] for r in named.values()), "checkpoints": None,
            "merged_from": {k: r.get("command") for k, r in named.items()}, "rows": rows, "failures": failures}
