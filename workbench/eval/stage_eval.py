"""Evaluate a trained stage once and keep the result beside it: ``<stage>/eval/scores.json``.

The pipeline's evaluate step, notebook 03 and ``report.html`` all read this file, so the numbers
a user sees in the notebook and in the report are the same numbers. It holds the compositional
scores (``eval.compositional``) with their protocol, the FID-proxy (``eval.fid``), the shape probe
(``eval.shape_probe``), and the worst failures with what the detector saw (their images in
``<stage>/eval/failures/``). A second call with the same protocol on the same weights reads the file
instead of sampling again.

Example::

    from workbench.eval.stage_eval import evaluate_stage
    scores = evaluate_stage("runs/demo/stage4", samples_per_prompt=4)
    scores["compositional"]["overall"], scores["fid_proxy"]["value"], scores["shape_probe"]["gap"]
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..diffusion import DEFAULT_SAMPLER
from ..images import display_scale, save_png
from ..io import atomic_write_json
from .compositional import describe_detections, evaluate_sampler, summarise, worst_failures
from .detector import Detector

SCORES_FILE = "scores.json"
EVAL_DIR = "eval"


def scores_path(stage_dir: str | Path) -> Path:
    """Where a stage's evaluation lives: ``<stage>/eval/scores.json``."""
    return Path(stage_dir) / EVAL_DIR / SCORES_FILE


def read_stage_scores(stage_dir: str | Path) -> dict | None:
    """The stage's saved evaluation, or None when it was never evaluated (or the file is damaged)."""
    path = scores_path(stage_dir)
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None


def evaluate_stage(stage_dir: str | Path, samples_per_prompt: int = 4, steps: int = 30, cfg_scale: float | None = None,
                   seed: int = 0, sampler: str = DEFAULT_SAMPLER, fid_samples: int = 200, n_reference: int = 1000,
                   failures: int = 8, batch: int = 64, device: str | None = None, progress: bool = True,
                   force: bool = False, probe_n: int = 96) -> dict:
    """Score a stage's newest checkpoint (EMA weights) and save ``<stage>/eval/scores.json``; returns it.

    ``fid_samples`` images of val-split captions give the FID-proxy (0 skips it); ``probe_n`` single-object
    val scenes give the shape probe (0 skips it). Nothing is sampled again when the saved file has the same
    protocol and weights, unless ``force``; a saved file without the probe gets it added.
    """
    from ..train.inference import load_for_sampling
    from .compositional import detector_hash
    from .fid import PROXY_LABEL, add_generated, fid_proxy_metric

    stage_dir = Path(stage_dir)
    bundle = load_for_sampling(stage_dir, device=device)
    cfg_scale = bundle.default_cfg_scale if cfg_scale is None else float(cfg_scale)
    protocol = {"checkpoint": str(bundle.checkpoint), "weights_sha256": bundle.weights_hash, "ema": bundle.ema,
                "samples_per_prompt": samples_per_prompt, "steps": steps, "cfg_scale": cfg_scale, "seed": seed,
                "sampler": sampler, "resolution": bundle.resolution, "prompts": "shapes.eval_prompts() v1",
                "detector_sha256": detector_hash(), "fid_samples": fid_samples, "fid_reference": n_reference}
    saved = read_stage_scores(stage_dir)
    if saved is not None and saved.get("protocol") == protocol and not force:
        if probe_n and (saved.get("shape_probe") or {}).get("n") != probe_n:   # scored before the probe existed
            saved["shape_probe"] = stage_probe(bundle, probe_n)
            atomic_write_json(scores_path(stage_dir), saved)
        return saved
    t0 = time.perf_counter()
    detector = Detector()
    results, images = evaluate_sampler(bundle, samples_per_prompt, steps, cfg_scale, seed, sampler, batch,
                                       detector=detector, progress=progress)
    out = {"protocol": protocol, "compositional": summarise(results)}
    folder = stage_dir / EVAL_DIR / "failures"
    index = {(r.prompt_index, r.sample_index): k for k, r in enumerate(results)}
    out["failures"] = []
    for i, r in enumerate(worst_failures(results, failures)):
        path = save_png(images[index[(r.prompt_index, r.sample_index)]], folder / f"failure_{i}.png",
                        scale=display_scale(images.shape[1]))
        out["failures"].append({"image": str(path.relative_to(stage_dir)), "prompt": r.prompt,
                                "category": r.category, "saw": describe_detections(r.detections),
                                "attributes": r.attributes})
    if fid_samples:
        metric = fid_proxy_metric(bundle.resolution, n_reference)
        add_generated(metric, bundle, fid_samples, steps=steps, cfg_scale=cfg_scale, sampler=sampler, seed=seed,
                      batch=batch, progress=progress)
        out["fid_proxy"] = {"label": PROXY_LABEL, "value": round(float(metric.compute()), 4), "samples": fid_samples,
                            "reference": n_reference}
    if probe_n:
        out["shape_probe"] = stage_probe(bundle, probe_n)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(scores_path(stage_dir), out)
    return out


def stage_probe(bundle, n: int) -> dict:
    """The shape probe of a sampling bundle, as saved in ``scores.json``: accuracy, gap, scenes, chance."""
    from .shape_probe import bundle_shape_probe

    result = bundle_shape_probe(bundle, n=n)
    return {key: result[key] for key in ("accuracy", "gap", "n", "chance")}


def evaluate_stages(stage_dirs, samples_per_prompt: int = 4, earlier_samples_per_prompt: int = 1,
                    fid_samples: int = 200, **kw) -> list[dict]:
    """``evaluate_stage`` for each stage of a run in order: the last with ``samples_per_prompt``, the earlier
    ones with ``earlier_samples_per_prompt`` (0 skips them) and a quarter of the FID samples."""
    stage_dirs = [Path(d) for d in stage_dirs]
    out = []
    for i, d in enumerate(stage_dirs):
        last = i == len(stage_dirs) - 1
        spp = samples_per_prompt if last else earlier_samples_per_prompt
        if spp > 0:
            out.append(evaluate_stage(d, samples_per_prompt=spp, fid_samples=fid_samples if last else fid_samples // 4,
                                      **kw))
    return out


def headline(scores: dict | None) -> dict:
    """The few numbers a table shows per stage: overall, single-object shape and colour, FID-proxy, shape probe."""
    if not scores:
        return {}
    comp = scores.get("compositional", {})
    return {"overall": comp.get("overall"), "single_object_shape": comp.get("single_object_shape"),
            "single_object_colour": comp.get("single_object_colour"),
            "fid_proxy": (scores.get("fid_proxy") or {}).get("value"),
            "shape_probe": (scores.get("shape_probe") or {}).get("accuracy"),
            "samples": comp.get("samples")}

