"""Running a suite: every (variant, seed) trained to the same FLOP budget, scored at fixed fractions of it.

Resumable like the pipeline: each run is a pair of Trainer stage folders under ``<out>/runs`` (a rerun
resumes them), and each evaluation is a JSON file under ``<out>/evals`` written atomically (a rerun
skips it). A variant that fails is recorded with its error; the others go on. ``results.json`` is
rewritten after every evaluation::

    results = run_suite(Suite.load("masking"), budget=20e12, seeds=2, checkpoints=4, out="runs/ablate/masking")
    results["rows"][0]   # {"suite", "variant", "seed", "step", "phase", "train_flops", "metrics": {...}}
"""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..io import atomic_write_json
from .suite import Suite


def prepare_suite_data(suite: Suite, out: Path, progress: bool = True) -> tuple[Path, Path]:
    """The suite's training scenes and held-out scenes (shapes train / val split), prepared once under ``out``."""
    from ..data.prepare import prepare

    spec, root = suite.data, out / "data"
    resolution = int(spec.get("resolution", 16))
    train, val = root / f"train_{spec.get('n', 8000)}", root / f"val_{spec.get('val_n', 256)}"
    for source, path, n in (("shapes", train, spec.get("n", 8000)), ("shapes:val", val, spec.get("val_n", 256))):
        prepare(source=source, out=path, resolutions=(resolution,), limit=int(n), n=int(n),
                text_encoder_options={"trim_padding": True}, progress=progress)
    return train, val


def evaluate_trainer(trainer, val: Path, protocol: dict) -> dict:
    """Held-out loss (per σ and mean), compositional accuracies and the FID-proxy of a trainer's sampling model."""
    from ..eval.compositional import evaluate_sampler, summarise
    from ..eval.fid import add_generated, fid_proxy_metric
    from ..eval.heldout import model_heldout_loss
    from ..train.sampling import bundle_for_trainer

    stage = trainer.stage
    heldout = model_heldout_loss(trainer.sampling_model(), val, stage.resolution, stage.sigma_data)
    bundle = bundle_for_trainer(trainer)
    results, _ = evaluate_sampler(bundle, protocol["samples_per_prompt"], protocol["steps"], protocol["cfg_scale"],
                                  progress=False)
    scores = summarise(results)
    metrics = {"val_loss": heldout["mean"], "val_loss_by_sigma": heldout["by_sigma"],
               "shape_accuracy": scores["attributes"]["shape"], "colour_accuracy": scores["attributes"]["colour"],
               "single_object_shape": scores["single_object_shape"], "overall": scores["overall"],
               "fid_proxy": None}
    if protocol.get("fid_samples"):
        metric = fid_proxy_metric(stage.resolution)
        add_generated(metric, bundle, protocol["fid_samples"], protocol["steps"], protocol["cfg_scale"], progress=False)
        metrics["fid_proxy"] = float(metric.compute())
    return metrics


def eval_points(steps: int, share: float, checkpoints: int) -> list[int]:
    """Steps of the main phase at which the budget reaches k / checkpoints (k = 1..), within its ``share``."""
    points = []
    for k in range(1, checkpoints + 1):
        fraction = k / checkpoints
        if fraction <= share + 1e-9:
            points.append(max(1, round(steps * fraction / share)))
    return sorted(set(points))


def run_variant(suite: Suite, variant: str, seed: int, budget: float, checkpoints: int, out: Path, train: Path,
                val: Path, bar) -> list[dict]:
    """Train one (variant, seed) through its phases, evaluating at each point; returns its result rows."""
    from ..train import Trainer

    protocol = {"samples_per_prompt": 1, "steps": 12, "cfg_scale": 3.0, "fid_samples": 64, **suite.evaluate}
    rows, spent = [], 0.0
    phases = suite.stages(variant, budget, seed, runs_dir=str(out / "runs"), data=str(train))
    main_share = 1.0 - suite.finetune
    for index, (stage, flops) in enumerate(phases):
        per_step = flops / stage.steps
        points = eval_points(stage.steps, main_share, checkpoints) if index == 0 else [stage.steps]
        if index == 0 and suite.finetune == 0:
            points = sorted(set(points) | {stage.steps})
        trainer = Trainer(stage, progress=False)
        try:
            for step in points:
                record = out / "evals" / stage.run / f"{stage.name}_step_{step:07d}.json"
                if not record.is_file():
                    if trainer.step_count < step:
                        trainer.run(steps=step - trainer.step_count)
                        trainer.save_checkpoint()
                    metrics = evaluate_trainer(trainer, val, protocol)
                    atomic_write_json(record, {"suite": suite.name, "variant": variant, "seed": seed,
                                               "phase": stage.name, "step": step,
                                               "train_flops": spent + step * per_step, "metrics": metrics})
                rows.append(json.loads(record.read_text()))
                bar.update(1)
            if trainer.step_count < stage.steps:             # the main phase runs to its end before a finetune
                trainer.run()
        finally:
            trainer.close()
        spent += flops
    return rows


def run_suite(suite: Suite, budget: float, seeds: int = 2, checkpoints: int = 4, out: str | Path = "runs/ablate",
              progress: bool = True, command: str | None = None) -> dict:
    """Run every variant of ``suite`` with seeds 0..seeds-1 at ``budget`` training FLOPs; write ``results.json``."""
    if seeds < 1 or checkpoints < 1 or budget <= 0:
        raise ValueError(f"ablate: seeds and checkpoints must be >= 1 and budget > 0 (got {seeds}, {checkpoints}, "
                         f"{budget:g})")
    out = Path(out)
    train, val = prepare_suite_data(suite, out, progress=False)
    jobs = [(v, s) for v in suite.variants for s in range(seeds)]
    n_points = len(eval_points(1000, 1.0 - suite.finetune, checkpoints)) + (1 if suite.finetune else 0)
    bar = tqdm(total=len(jobs) * n_points, desc=f"ablate {suite.name}", unit="eval", disable=not progress)
    rows, failures, t0 = [], [], time.perf_counter()
    results = {}
    for variant, seed in jobs:
        try:
            rows += run_variant(suite, variant, seed, budget, checkpoints, out, train, val, bar)
        except Exception as err:  # noqa: BLE001 - one failed variant must not lose the others
            failures.append({"variant": variant, "seed": seed, "error": f"{type(err).__name__}: {err}",
                             "traceback": traceback.format_exc(limit=5)})
            tqdm.write(f"ablate {suite.name}: {variant} seed {seed} failed: {type(err).__name__}: {err}")
        results = {"suite": suite.name, "budget": budget, "seeds": seeds, "checkpoints": checkpoints,
                   "command": command, "protocol": {"evaluate": suite.evaluate, "data": suite.data,
                                                    "finetune": suite.finetune, "heldout": "eval.heldout.SIGMAS, "
                                                    "fixed noise per row, unmasked, EMA weights"},
                   "rows": rows, "failures": failures, "seconds": round(time.perf_counter() - t0, 1)}
        atomic_write_json(out / "results.json", results)
    bar.close()
    return results


def summary_table(results: dict, metric: str = "val_loss") -> list[dict]:
    """Per variant at the final budget: mean, min, max of ``metric`` over seeds, and whether it beats the others'
    spread (a difference smaller than the spread of either is flagged ``within_spread``)."""
    final = {}
    for row in results["rows"]:
        key = (row["variant"], row["seed"])
        if key not in final or row["train_flops"] > final[key]["train_flops"]:
            final[key] = row
    table = []
    for variant in dict.fromkeys(v for v, _ in final):
        values = [r["metrics"][metric] for (v, _), r in final.items() if v == variant and r["metrics"][metric] is not None]
        if values:
            table.append({"variant": variant, "mean": float(np.mean(values)), "min": float(min(values)),
                          "max": float(max(values)), "seeds": len(values)})
    table.sort(key=lambda r: r["mean"])
    for row in table:
        row["within_spread_of"] = [o["variant"] for o in table if o is not row and
                                   not (row["max"] < o["min"] or o["max"] < row["min"])]
    return table


def load_or_run(suite: Suite, budget: float, seeds: int, checkpoints: int, out: str | Path, run: bool) -> dict | None:
    """Run (or resume) ``suite`` when ``run``, else read ``out/results.json``; None (with a line saying how to make
    it) when there is none yet. What notebook 06 calls."""
    path = Path(out) / "results.json"
    if run:
        return run_suite(suite, budget, seeds, checkpoints, out)
    if path.is_file():
        return json.loads(path.read_text())
    print(f"no results in {out} yet: run `workbench ablate --suite {suite.name} --budget {budget:g} --seeds {seeds} "
          f"--out {out}`, or set run = True")
    return None

