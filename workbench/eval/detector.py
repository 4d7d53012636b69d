"""The shapes detector: finds the objects in an image of the shapes world, with shape, colour, centre and size.

It is what the compositional score (``eval.compositional``) looks through, so it is validated on
ground-truth renders (clean and degraded, ``detector_accuracy``) before it judges any sample.

How it sees an image (all resolutions; 32 and 64 px are validated):

1. **Background and colour, per pixel.** Each pixel is explained as a mix of the grey background
   ``g`` and one palette colour ``C``: ``p = g + a (C - g)``. For every palette colour the coverage
   ``a`` comes from least squares; the colour with the smallest residual wins. Anti-aliased edges
   get partial coverage of the right colour instead of the wrong nearest colour.
2. **Objects.** Connected components (8-neighbour) of the pixels whose best coverage is above
   one half, one colour at a time; specks below ``min_area`` (a fraction of the image) are dropped.
3. **Shape.** Each component's coverage map, cropped around its box and resampled to 24x24
   (aspect kept), goes through a small CNN (``ShapeClassifier``) trained on crops of rendered
   scenes that this same extraction produced, with blur, noise, JPEG and box-jitter augmentation.
   The shipped weights (``workbench/assets/shape_classifier.safetensors``) come from
   ``workbench train-detector`` (the exact command is in docs/evaluation.md).

Example::

    from workbench.eval.detector import Detector
    detector = Detector()                        # the shipped classifier weights
    objects = detector(image_uint8)              # (H, W, 3) -> [Detection(shape='star', colour='red', ...)]
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import ndimage

from ..data.shapes import COLOURS, SHAPES, Scene, make_scenes, render_scene
from ..errors import MissingFileError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
CLASSIFIER_WEIGHTS = ASSETS / "shape_classifier.safetensors"
CROP = 24                                    # classifier input side (pixels of the resampled crop)
CROP_MARGIN = 1.3                            # crop side = CROP_MARGIN x the component's longer box side + 2 px
PALETTE = np.array(list(COLOURS.values()), dtype=np.float32)          # (K, 3) sRGB
COLOUR_NAMES = tuple(COLOURS)
MIN_AREA = 0.01                              # smaller components are specks, not objects (a small star is ~0.023)
_BG_CHROMA = 30.0                            # pixels with max-min below this (RGB levels) count as background


@dataclass(frozen=True)
class Detection:
    """One detected object. ``cx``, ``cy``, ``bbox`` and ``area`` are fractions of the image side / area."""

    shape: str
    colour: str
    cx: float
    cy: float
    bbox: tuple[float, float, float, float]   # (x0, y0, x1, y1)
    area: float                               # summed coverage / image area
    shape_confidence: float                   # classifier probability of ``shape``

    def to_dict(self) -> dict:
        """JSON-able form (numbers rounded to 4 decimals)."""
        d = asdict(self)
        return {k: (round(v, 4) if isinstance(v, float) else [round(x, 4) for x in v] if isinstance(v, tuple) else v)
                for k, v in d.items()}


# ---------------------------------------------------------------------------------------------
#  Pixels -> coverage per colour -> components
# ---------------------------------------------------------------------------------------------

def background_grey(image: np.ndarray) -> float:
    """The background's grey level: the median brightness of the low-chroma pixels (220 if there are none)."""
    img = image.astype(np.float32)                                                # (H, W, 3)
    chroma = img.max(-1) - img.min(-1)                                            # (H, W)
    grey = img.mean(-1)[chroma < _BG_CHROMA]                                      # (n,)
    return float(np.median(grey)) if grey.size else 220.0


def colour_coverage(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, the best palette colour and its coverage: ``(label (H, W) int, alpha (H, W) float in [0, 1])``.

    Each pixel ``p`` is unmixed as ``g + a (C - g)`` against every palette colour ``C``; the colour
    whose least-squares fit leaves the smallest residual wins.
    """
    img = image.astype(np.float32)                                                # (H, W, 3)
    g = background_grey(image)
    d = img - g                                                                   # (H, W, 3)
    c = PALETTE - g                                                               # (K, 3)
    a = np.clip((d @ c.T) / (c * c).sum(-1), 0.0, 1.0)                            # (H, W, K)
    resid = ((d[..., None, :] - a[..., None] * c) ** 2).sum(-1)                    # (H, W, K)
    label = resid.argmin(-1)                                                      # (H, W)
    alpha = np.take_along_axis(a, label[..., None], -1)[..., 0]                   # (H, W)
    return label, alpha


@dataclass
class Component:
    """A candidate object before shape classification (pixel units)."""

    colour: int
    coverage: np.ndarray       # (H, W) this object's coverage, zero elsewhere
    box: tuple[int, int, int, int]   # (x0, y0, x1, y1) pixel box of the thresholded mask, x1/y1 exclusive
    area: float                # summed coverage, pixels
    cx: float                  # coverage-weighted centre, pixels
    cy: float


def find_components(image: np.ndarray, min_area: float = 0.004) -> list[Component]:
    """Connected components of covered pixels, one colour at a time, larger than ``min_area`` x image area.

    The default keeps small fragments (training crops use it); ``Detector`` drops specks below ``MIN_AREA``."""
    label, alpha = colour_coverage(image)
    h, w = alpha.shape
    solid = alpha > 0.5                                                           # (H, W)
    out = []
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5                           # (H, W) pixel centres
    for k in np.unique(label[solid]):
        cover_k = np.where(label == k, alpha, 0.0)                                # (H, W)
        parts, n = ndimage.label(solid & (label == k), structure=np.ones((3, 3)))
        for i, sl in enumerate(ndimage.find_objects(parts), start=1):
            grown = ndimage.binary_dilation(parts == i, iterations=1)            # take the soft edge with it
            cov = np.where(grown, cover_k, 0.0)                                   # (H, W)
            area = float(cov.sum())
            if area < min_area * h * w:
                continue
            box = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
            cx, cy = float((cov * xs).sum() / area), float((cov * ys).sum() / area)
            out.append(Component(int(k), cov, box, area, cx, cy))
    return out


def crop_components(components: Sequence[Component], size: int = CROP,
                    jitter: torch.Tensor | None = None) -> torch.Tensor:
    """Each component's coverage around its box, resampled to ``(N, 1, size, size)`` (aspect kept).

    ``jitter`` (N, 3) adds (dx, dy, log-scale) to each crop box, as fractions of its side (augmentation).
    """
    if not components:
        return torch.zeros(0, 1, size, size)
    h, w = components[0].coverage.shape
    maps = torch.from_numpy(np.stack([c.coverage for c in components]).astype(np.float32))[:, None]  # (N, 1, H, W)
    boxes = torch.tensor([c.box for c in components], dtype=torch.float32)                          # (N, 4)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2                                                      # (N, 2) pixels
    side = (boxes[:, 2:] - boxes[:, :2]).max(1).values * CROP_MARGIN + 2                            # (N,)
    if jitter is not None:
        centre = centre + jitter[:, :2] * side[:, None]
        side = side * jitter[:, 2].exp()
    theta = torch.zeros(len(components), 2, 3)                                                      # (N, 2, 3)
    theta[:, 0, 0] = side / w
    theta[:, 1, 1] = side / h
    theta[:, 0, 2] = centre[:, 0] / w * 2 - 1
    theta[:, 1, 2] = centre[:, 1] / h * 2 - 1
    grid = F.affine_grid(theta, (len(components), 1, size, size), align_corners=False)             # (N, s, s, 2)
    return F.grid_sample(maps, grid, mode="bilinear", padding_mode="zeros", align_corners=False)   # (N, 1, s, s)


# ---------------------------------------------------------------------------------------------
#  The shape classifier
# ---------------------------------------------------------------------------------------------

class ShapeClassifier(nn.Module):
    """A small CNN: a (N, 1, 24, 24) coverage crop -> (N, 6) shape logits (order of ``SHAPES``).

    ``features(x)`` returns the (N, 64) penultimate activations.
    """

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(4 * w, len(SHAPES))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, s, s) crops -> (N, 4*width) features."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, s, s) crops -> (N, 6) logits."""
        return self.head(self.body(x))


def load_classifier(path: str | Path | None = None) -> ShapeClassifier:
    """The shape classifier with weights from ``path`` (default: the shipped ones), in eval mode."""
    from safetensors.torch import load_file

    path = Path(path) if path is not None else CLASSIFIER_WEIGHTS
    if not path.is_file():
        raise MissingFileError(f"shape-classifier weights not found at {path}; train them with "
                                f"`workbench train-detector --out {path}`")
    model = ShapeClassifier()
    model.load_state_dict(load_file(str(path)))
    return model.eval().requires_grad_(False)


class Detector:
    """Finds objects in shapes images: ``detector(image) -> list[Detection]``; ``detector.batch(images)``.

    Args:
        classifier: a ``ShapeClassifier`` or a weights path (default: the shipped weights).
        min_area: components smaller than this fraction of the image are specks, not objects (the
            smallest shape, a small star, covers about 0.023).

    Example::

        detector = Detector()
        for d in detector(render_scene(scene, 64)):
            print(d.colour, d.shape, round(d.cx, 2), round(d.cy, 2))
    """

    def __init__(self, classifier: ShapeClassifier | str | Path | None = None, min_area: float = MIN_AREA):
        self.classifier = classifier if isinstance(classifier, nn.Module) else load_classifier(classifier)
        self.min_area = float(min_area)

    def __call__(self, image: np.ndarray) -> list[Detection]:
        """Objects in one ``(H, W, 3)`` uint8 image, largest first."""
        return self.batch([image])[0]

    @torch.no_grad()
    def batch(self, images: Iterable[np.ndarray]) -> list[list[Detection]]:
        """Objects in each image of a batch (one classifier pass for all their components)."""
        comps = [find_components(np.asarray(img), self.min_area) for img in images]
        flat = [c for cs in comps for c in cs]
        probs = self.classifier(crop_components(flat)).softmax(-1) if flat else torch.zeros(0, len(SHAPES))
        out, i = [], 0
        for cs in comps:
            dets = []
            for c in cs:
                h, w = c.coverage.shape
                k = int(probs[i].argmax())
                dets.append(Detection(SHAPES[k], COLOUR_NAMES[c.colour], c.cx / w, c.cy / h,
                                      (c.box[0] / w, c.box[1] / h, c.box[2] / w, c.box[3] / h),
                                      c.area / (h * w), float(probs[i, k])))
                i += 1
            out.append(sorted(dets, key=lambda d: -d.area))
        return out


# ---------------------------------------------------------------------------------------------
#  Degradations (augmentation and the robustness curve)
# ---------------------------------------------------------------------------------------------

def degrade(image: np.ndarray, blur: float = 0.0, noise: float = 0.0, jpeg: int | None = None,
            rng: np.random.Generator | None = None) -> np.ndarray:
    """A degraded copy of a uint8 image: Gaussian blur (sigma, px), additive Gaussian noise (sigma, levels), JPEG."""
    x = image.astype(np.float32)
    if blur > 0:
        x = ndimage.gaussian_filter(x, sigma=(blur, blur, 0))
    if noise > 0:
        x = x + (rng or np.random.default_rng(0)).normal(0.0, noise, x.shape)
    x = np.clip(np.round(x), 0, 255).astype(np.uint8)
    if jpeg is not None:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(x).save(buf, format="JPEG", quality=int(jpeg))
        x = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return x


def _random_degradation(rng: np.random.Generator) -> dict:
    return {"blur": float(rng.choice([0.0, 0.0, rng.uniform(0.3, 1.2)])),
            "noise": float(rng.choice([0.0, rng.uniform(2, 15), rng.uniform(2, 25)])),
            "jpeg": int(rng.integers(30, 95)) if rng.random() < 0.3 else None}


# ---------------------------------------------------------------------------------------------
#  Matching detections to ground truth
# ---------------------------------------------------------------------------------------------

def match_ground_truth(components_or_dets: Sequence, scene: Scene, resolution: int) -> list[int | None]:
    """For each component / detection, the index of the ground-truth object whose centre is nearest
    (within 0.6 of its half-size), each object used once; None when there is none."""
    from ..data.shapes import SIZES

    used, out = set(), []
    for c in components_or_dets:
        cx, cy = (c.cx / resolution, c.cy / resolution) if isinstance(c, Component) else (c.cx, c.cy)
        best, best_d = None, math.inf
        for j, o in enumerate(scene.objects):
            d = math.hypot(cx - o.cx, cy - o.cy)
            if j not in used and d < 0.6 * SIZES[o.size] and d < best_d:
                best, best_d = j, d
        if best is not None:
            used.add(best)
        out.append(best)
    return out


def training_crops(n_scenes: int, resolutions: Sequence[int] = (32, 48, 64), seed: int = 0,
                   degrade_p: float = 0.6) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops ``(N, 1, 24, 24)`` and shape labels ``(N,)`` from rendered train scenes, through the detector's own
    extraction."""
    rng = np.random.default_rng(seed)
    scenes = make_scenes(n_scenes, "train", seed=seed)
    crops, labels = [], []
    for i, scene in enumerate(scenes):
        res = int(resolutions[i % len(resolutions)])
        img = render_scene(scene, res)
        if rng.random() < degrade_p:
            img = degrade(img, rng=rng, **_random_degradation(rng))
        comps = find_components(img)
        keep = [(c, j) for c, j in zip(comps, match_ground_truth(comps, scene, res)) if j is not None]
        if not keep:
            continue
        jitter = torch.from_numpy(np.stack([rng.uniform(-0.06, 0.06, len(keep)), rng.uniform(-0.06, 0.06, len(keep)),
                                            rng.uniform(-0.12, 0.12, len(keep))], 1).astype(np.float32))
        crops.append(crop_components([c for c, _ in keep], jitter=jitter))
        labels.extend(SHAPES.index(scene.objects[j].shape) for _, j in keep)
    return torch.cat(crops), torch.tensor(labels)


def train_classifier(n_scenes: int = 24000, epochs: int = 6, batch: int = 256, lr: float = 3e-3, seed: int = 0,
                     out: str | Path | None = None, progress: bool = True) -> tuple[ShapeClassifier, dict]:
    """Train a ``ShapeClassifier`` on crops of rendered scenes (see ``training_crops``); optionally save it.

    Returns ``(model, report)`` with the training accuracy and seconds. Horizontal flips are added
    on the fly (every shape is mirror-symmetric); rotations are not (triangles and stars point up).
    """
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    x, y = training_crops(n_scenes, seed=seed)
    made = time.perf_counter() - t0
    model = ShapeClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(x) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(total=steps, desc="shape classifier", disable=not progress)
    correct = seen = 0
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch):
            idx = order[i:i + batch]
            xb, yb = x[idx], y[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if epoch == epochs - 1:
                correct += int((logits.argmax(-1) == yb).sum())
                seen += len(idx)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval().requires_grad_(False)
    report = {"crops": len(x), "scenes": n_scenes, "epochs": epochs,
              "last_epoch_train_accuracy": correct / max(1, seen), "crop_seconds": round(made, 1),
              "seconds": round(time.perf_counter() - t0, 1)}
    if out is not None:
        from safetensors.torch import save

        from ..io import atomic_write_bytes

        atomic_write_bytes(out, save({k: v.contiguous() for k, v in model.state_dict().items()}))
    return model, report


# ---------------------------------------------------------------------------------------------
#  Validation on ground-truth renders
# ---------------------------------------------------------------------------------------------

def relation_holds(subject: tuple[float, float], obj: tuple[float, float], relation: str) -> bool:
    """Whether ``subject`` (cx, cy) is ``relation`` of ``obj``: right direction along the axis, and that axis
    dominant."""
    dx, dy = subject[0] - obj[0], subject[1] - obj[1]
    along, across = {"left_of": (-dx, dy), "right_of": (dx, dy), "above": (-dy, dx), "below": (dy, dx)}[relation]
    return along > 0 and along >= abs(across)


def detector_accuracy(detector: Detector, n: int = 500, resolution: int = 32, split: str = "val", seed: int = 0,
                      **degradation) -> dict:
    """Object-level accuracy of ``detector`` on ``n`` ground-truth renders (optionally degraded).

    Returns ``{"shape", "colour", "count", "relation", "objects", "scenes"}``: shape and colour
    accuracy over ground-truth objects (a missed object counts as wrong), the fraction of scenes
    with exactly the right number of detections, and for ``position`` scenes the fraction where
    the captioned relation holds between the matched detections.
    """
    rng = np.random.default_rng(seed + 1)
    scenes = make_scenes(n, split, seed=seed)
    images = [render_scene(s, resolution) for s in scenes]
    if degradation:
        images = [degrade(img, rng=rng, **degradation) for img in images]
    shape_ok = colour_ok = objects = count_ok = rel_ok = rel_n = 0
    for scene, dets in zip(scenes, detector.batch(images)):
        match = match_ground_truth(dets, scene, resolution)
        by_gt = {j: d for d, j in zip(dets, match) if j is not None}
        for j, o in enumerate(scene.objects):
            d = by_gt.get(j)
            shape_ok += d is not None and d.shape == o.shape
            colour_ok += d is not None and d.colour == o.colour
        objects += len(scene.objects)
        count_ok += len(dets) == len(scene.objects)
        if scene.relation is not None:
            i, rel, j = scene.relation
            rel_n += 1
            rel_ok += i in by_gt and j in by_gt and relation_holds((by_gt[i].cx, by_gt[i].cy),
                                                                   (by_gt[j].cx, by_gt[j].cy), rel)
    return {"shape": shape_ok / objects, "colour": colour_ok / objects, "count": count_ok / n,
            "relation": rel_ok / max(1, rel_n), "objects": objects, "scenes": n}


DEGRADATIONS = {                                # the robustness curve: one axis at a time
    "blur": [0.0, 0.5, 0.8, 1.2, 1.6, 2.0],
    "noise": [0.0, 5.0, 10.0, 20.0, 30.0, 45.0],
    "jpeg": [95, 75, 50, 30, 15],
}


def degradation_curve(detector: Detector, n: int = 300, resolutions: Sequence[int] = (32, 64)) -> list[dict]:
    """``detector_accuracy`` along each axis of ``DEGRADATIONS`` at each resolution (rows for a table or JSON)."""
    rows = []
    for res in resolutions:
        for kind, levels in DEGRADATIONS.items():
            for level in levels:
                acc = detector_accuracy(detector, n, res, **{kind: level})
                rows.append({"resolution": res, "degradation": kind, "level": level,
                             **{k: round(v, 4) for k, v in acc.items()
                                if k in ("shape", "colour", "count", "relation")}})
    return rows
