"""The compositional score: a GenEval for the shapes world (Ghosh et al. 2023, "GenEval").

Every fixed evaluation prompt (``shapes.eval_prompts()``, 55 prompts) says what a correct image
must show. The detector (``eval.detector``) says what an image does show. This module compares them.

**Whole-prompt correctness** (as GenEval, on the matched detections below), by the prompt's ``check``:

- ``shape`` (single_object, two_objects): every named object's detection has the named shape;
- ``colour`` (colours): the named object's detection has the named shape and colour;
- ``count`` (counting): exactly N detected objects have the named shape;
- ``relation`` (position): both named objects' detections have their shapes and the subject is
  on the named side (right direction along the axis, and that axis dominant);
- ``binding`` (colour_attribution): each named object's detection has its own shape and colour.

**Partial credit per attribute** shows progress before whole prompts are right. Each named
object (a count of N names N objects) is matched to its own detection: the largest one of its
colour, else the largest one left. The shape never decides the match, so a speck that happens
to look like the named shape earns nothing; the object the model drew in that colour must. Then:

- ``colour``: the matched detection has the named colour (a missing detection is wrong);
- ``shape``: the matched detection has the named shape;
- ``count``: the image has exactly as many objects as the prompt names;
- ``position``: (position prompts) the relation holds between the matched detections.

Scores: per category (``EVAL_CATEGORIES``) over the prompts that are not held out, ``overall`` =
their mean (as GenEval), ``heldout`` separately, and per attribute. The headline numbers of the
CPU demo are ``single_object_shape`` and ``single_object_colour``: the shape and colour accuracy
over the single-object prompts (categories single_object and colours, held-out pairs excluded).

Example::

    from workbench.eval.compositional import evaluate_checkpoint
    report = evaluate_checkpoint("runs/demo/stage4", samples_per_prompt=4)
    report["scores"]["overall"], report["scores"]["attributes"]["shape"]
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.shapes import EVAL_CATEGORIES, EvalPrompt, eval_prompts
from ..diffusion import DEFAULT_SAMPLER
from ..io import digest
from .detector import Detection, Detector, relation_holds
from ..errors import InputError

ATTRIBUTES = ("colour", "shape", "count", "position")
SINGLE_OBJECT_CATEGORIES = ("single_object", "colours")


@dataclass
class SampleResult:
    """One sample of one prompt: what the detector saw and how it scored."""

    prompt_index: int
    sample_index: int
    prompt: str
    category: str
    heldout: bool
    correct: bool
    attributes: dict                      # name -> 0.0..1.0 (None where it does not apply)
    detections: list[Detection] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-able form."""
        return {"prompt_index": self.prompt_index, "sample_index": self.sample_index, "prompt": self.prompt,
                "category": self.category, "heldout": self.heldout, "correct": self.correct,
                "attributes": self.attributes, "detections": [d.to_dict() for d in self.detections]}


# ---------------------------------------------------------------------------------------------
#  One image against one prompt
# ---------------------------------------------------------------------------------------------

def named_objects(prompt: EvalPrompt) -> list[dict]:
    """The prompt's objects, one entry per named instance (a count of 3 names 3 objects)."""
    return [{"shape": o["shape"], "colour": o["colour"]} for o in prompt.objects for _ in range(o["count"])]


def match_objects(named: Sequence[dict], detections: Sequence[Detection]) -> list[Detection | None]:
    """Give each named object its own detection: the largest of its colour, else the largest left (never by shape)."""
    free = list(range(len(detections)))
    out: list[Detection | None] = [None] * len(named)
    for rank in (lambda n, d: d.colour == n["colour"], lambda n, d: True):
        for i, obj in enumerate(named):
            if out[i] is None:
                j = next((j for j in free if rank(obj, detections[j])), None)   # detections are largest first
                if j is not None:
                    out[i] = detections[j]
                    free.remove(j)
    return out


def score_image(prompt: EvalPrompt, detections: Sequence[Detection]) -> tuple[bool, dict]:
    """``(correct, attributes)`` of one image's detections against ``prompt`` (see the module docstring)."""
    named = named_objects(prompt)
    matched = match_objects(named, detections)
    colour = float(np.mean([m is not None and m.colour == n["colour"] for n, m in zip(named, matched)]))
    shape = float(np.mean([m is not None and m.shape == n["shape"] for n, m in zip(named, matched)]))
    count = float(len(detections) == len(named))
    shapes_found = [d.shape for d in detections]
    position = None
    if prompt.relation is not None:
        i, rel, j = prompt.relation
        a, b = matched[i], matched[j]
        position = float(a is not None and b is not None and relation_holds((a.cx, a.cy), (b.cx, b.cy), rel))
    shape_ok = all(m is not None and m.shape == n["shape"] for n, m in zip(named, matched))
    both_ok = shape_ok and all(m.colour == n["colour"] for n, m in zip(named, matched))
    if prompt.check == "shape":
        correct = shape_ok
    elif prompt.check in ("colour", "binding"):
        correct = both_ok
    elif prompt.check == "count":
        o = prompt.objects[0]
        correct = shapes_found.count(o["shape"]) == o["count"]
    elif prompt.check == "relation":
        correct = shape_ok and bool(position)
    else:
        raise InputError(f"unknown check {prompt.check!r} in prompt {prompt.prompt!r}")
    return bool(correct), {"colour": colour, "shape": shape, "count": count, "position": position}


# ---------------------------------------------------------------------------------------------
#  Many images -> scores
# ---------------------------------------------------------------------------------------------

def score_images(images: Sequence[np.ndarray], prompt_indices: Sequence[int],
                 sample_indices: Sequence[int] | None = None, prompts: Sequence[EvalPrompt] | None = None,
                 detector: Detector | None = None) -> list[SampleResult]:
    """Score uint8 images, each made for ``prompts[prompt_indices[k]]``; one ``SampleResult`` per image."""
    prompts = list(prompts) if prompts is not None else eval_prompts()
    detector = detector or Detector()
    sample_indices = list(sample_indices) if sample_indices is not None else [0] * len(images)
    results = []
    for p, s, dets in zip(prompt_indices, sample_indices, detector.batch(images)):
        prompt = prompts[p]
        correct, attrs = score_image(prompt, dets)
        results.append(SampleResult(p, s, prompt.prompt, prompt.category, prompt.heldout, correct, attrs, dets))
    return results


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(float(np.mean(values)), 4) if values else None


def summarise(results: Sequence[SampleResult]) -> dict:
    """Scores from sample results: ``categories``, ``overall``, ``heldout``, ``attributes``,
    ``attributes_by_category``, ``single_object_shape`` / ``single_object_colour`` and ``samples``."""
    seen = [r for r in results if not r.heldout]
    held = [r for r in results if r.heldout]
    categories = {c: _mean(r.correct for r in seen if r.category == c) for c in EVAL_CATEGORIES}
    present = [v for v in categories.values() if v is not None]
    single = [r for r in seen if r.category in SINGLE_OBJECT_CATEGORIES]
    by_cat = {c: {a: _mean(r.attributes[a] for r in seen if r.category == c) for a in ATTRIBUTES}
              for c in EVAL_CATEGORIES}
    by_cat["heldout"] = {a: _mean(r.attributes[a] for r in held) for a in ATTRIBUTES}
    return {
        "overall": round(float(np.mean(present)), 4) if present else None,
        "categories": categories,
        "heldout": _mean(r.correct for r in held),
        "attributes": {a: _mean(r.attributes[a] for r in seen) for a in ATTRIBUTES},
        "attributes_by_category": by_cat,
        "single_object_shape": _mean(r.attributes["shape"] for r in single),
        "single_object_colour": _mean(r.attributes["colour"] for r in single),
        "samples": len(results),
    }


def worst_failures(results: Sequence[SampleResult], n: int = 8) -> list[SampleResult]:
    """The ``n`` wrong samples with the lowest partial credit (one per prompt first), for a failure grid."""
    wrong = [r for r in results if not r.correct]

    def order(r: SampleResult) -> tuple:                  # lowest partial credit first
        return np.mean([v for v in r.attributes.values() if v is not None]), r.prompt_index, r.sample_index

    wrong.sort(key=order)
    firsts, rest, seen = [], [], set()
    for r in wrong:
        (rest if r.prompt_index in seen else firsts).append(r)
        seen.add(r.prompt_index)
    return (firsts + rest)[:n]


def describe_detections(detections: Sequence[Detection]) -> str:
    """What the detector saw, in words: ``"red circle, blue square"`` or ``"nothing"``."""
    return ", ".join(f"{d.colour} {d.shape}" for d in detections) or "nothing"


# ---------------------------------------------------------------------------------------------
#  Sampling a model on the prompts
# ---------------------------------------------------------------------------------------------

def prompt_noise_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """The initial-noise seed of one sample: the same whatever the batch size or device."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{prompt_index}/{sample_index}".encode()).digest()[:7], "big")


def evaluate_sampler(bundle, samples_per_prompt: int = 4, steps: int = 30, cfg_scale: float = 5.0, seed: int = 0,
                     sampler: str = DEFAULT_SAMPLER, batch: int = 32, prompts: Sequence[EvalPrompt] | None = None,
                     detector: Detector | None = None, progress: bool = True,
                     categories: Sequence[str] | None = None) -> tuple[list[SampleResult], np.ndarray]:
    """Sample every prompt ``samples_per_prompt`` times with a loaded model and score the images.

    ``bundle`` is a ``train.inference.SamplingBundle`` (``load_for_sampling(path)``). Each sample's
    initial noise is seeded by (seed, prompt, sample), so scores do not depend on ``batch``.
    ``categories`` restricts the prompts (e.g. ``("single_object", "colours")``).
    Returns ``(results, images)`` with images uint8 (N, H, W, 3) in the results' order.
    """
    from tqdm.auto import tqdm

    unknown = sorted(set(categories or ()) - set(EVAL_CATEGORIES))
    if unknown:
        raise InputError(f"compositional score: unknown categories {', '.join(unknown)}; the categories are "
                         f"{', '.join(EVAL_CATEGORIES)}")
    prompts = list(prompts) if prompts is not None else eval_prompts()
    jobs = [(p, s) for p, prompt in enumerate(prompts) for s in range(samples_per_prompt)
            if categories is None or prompt.category in categories]
    images = []
    bar = tqdm(total=len(jobs), desc="sampling eval prompts", unit="img", disable=not progress)
    for i in range(0, len(jobs), batch):
        chunk = jobs[i:i + batch]
        images.append(bundle.sample([prompts[p].prompt for p, _ in chunk], steps=steps, cfg_scale=cfg_scale,
                                    sampler=sampler, seeds=[prompt_noise_seed(seed, p, s) for p, s in chunk]))
        bar.update(len(chunk))
    bar.close()
    images = np.concatenate(images) if images else np.zeros((0, 1, 1, 3), np.uint8)
    results = score_images(images, [p for p, _ in jobs], [s for _, s in jobs], prompts, detector)
    return results, images


def evaluate_checkpoint(spec: str | Path, samples_per_prompt: int = 4, steps: int = 30, cfg_scale: float | None = None,
                        seed: int = 0, sampler: str = DEFAULT_SAMPLER, batch: int = 32, use_ema: bool = True,
                        device: str | None = None, progress: bool = True,
                        categories: Sequence[str] | None = None) -> dict:
    """Load a checkpoint (or a stage / run folder's newest), sample the eval prompts and score them.

    Returns ``{"protocol", "scores", "results", "seconds"}``; ``protocol`` records everything that
    makes the score reproducible (samples, steps, CFG, seed, sampler, EMA, the checkpoint and its
    weights' hash, the detector's hash). ``cfg_scale`` defaults to the stage's ``sample_cfg_scale``.
    """
    from ..train.inference import load_for_sampling

    t0 = time.perf_counter()
    bundle = load_for_sampling(spec, use_ema=use_ema, device=device)
    cfg_scale = bundle.default_cfg_scale if cfg_scale is None else float(cfg_scale)
    detector = Detector()
    results, _ = evaluate_sampler(bundle, samples_per_prompt, steps, cfg_scale, seed, sampler, batch,
                                  detector=detector, progress=progress, categories=categories)
    protocol = {"checkpoint": str(bundle.checkpoint), "weights_sha256": bundle.weights_hash, "ema": bundle.ema,
                "samples_per_prompt": samples_per_prompt, "steps": steps, "cfg_scale": cfg_scale, "seed": seed,
                "sampler": sampler, "resolution": bundle.resolution, "prompts": "shapes.eval_prompts() v1",
                "categories": list(categories) if categories else "all",
                "detector_sha256": detector_hash()}
    return {"protocol": protocol, "scores": summarise(results), "results": [r.to_dict() for r in results],
            "seconds": round(time.perf_counter() - t0, 1)}


def trainer_evaluator(samples_per_prompt: int | None = None, steps: int = 20, seed: int = 0,
                      categories: Sequence[str] | None = None):
    """An ``evaluator`` for ``Trainer``: scores the sampling model (EMA when kept) on the eval prompts.

    Returns ``f(trainer) -> {"overall", "single_object_shape", "single_object_colour", "shape", "colour"}``
    with ``samples_per_prompt`` (default: the stage's ``eval_samples_per_prompt``) images per prompt.

    Example::

        stage = Stage.from_yaml("configs/demo/stage1.yaml", eval_every=100)
        trainer = Trainer(stage, evaluator=trainer_evaluator())
    """
    detector = Detector()
    cache = {}

    def evaluate(trainer) -> dict:
        from ..train.inference import bundle_for_trainer

        if "bundle" not in cache:
            cache["bundle"] = bundle_for_trainer(trainer)
        bundle = cache["bundle"]
        bundle.model = trainer.sampling_model()
        spp = samples_per_prompt or trainer.stage.eval_samples_per_prompt
        results, _ = evaluate_sampler(bundle, spp, steps, trainer.stage.sample_cfg_scale, seed, detector=detector,
                                      progress=False, categories=categories)
        scores = summarise(results)
        return {"overall": scores["overall"], "single_object_shape": scores["single_object_shape"],
                "single_object_colour": scores["single_object_colour"], "shape": scores["attributes"]["shape"],
                "colour": scores["attributes"]["colour"]}

    return evaluate


def evaluator_for(stage):
    """``trainer_evaluator()`` when the stage sets ``eval_every``, else None (what notebooks and the CLI pass)."""
    return trainer_evaluator() if stage.eval_every else None


def detector_hash() -> str:
    """Short sha256 of the shipped shape-classifier weights (recorded in every score's protocol)."""
    from .detector import CLASSIFIER_WEIGHTS

    return digest(CLASSIFIER_WEIGHTS.read_bytes())


def scores_table(scores: dict) -> list[dict]:
    """Rows ``{"score", "value"}`` for display: overall, each category, held-out, each attribute."""
    rows = [{"score": "overall (mean of categories)", "value": scores["overall"]}]
    rows += [{"score": f"category: {c}", "value": v} for c, v in scores["categories"].items()]
    rows += [{"score": "held-out colour-shape pairs", "value": scores["heldout"]}]
    rows += [{"score": f"attribute: {a}", "value": v} for a, v in scores["attributes"].items()]
    rows += [{"score": "single-object shape accuracy", "value": scores["single_object_shape"]},
             {"score": "single-object colour accuracy", "value": scores["single_object_colour"]}]
    return rows
