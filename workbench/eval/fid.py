"""FID-proxy on shapes features, and real Inception FID from a local weights file.

**FID-proxy (shapes features), not comparable with published FID.** torchmetrics'
``FrechetInceptionDistance`` with our own feature extractor: ``SceneFeatureNet``, a small CNN
trained on rendered shapes scenes (at 32 px) to predict what a scene holds (objects per colour and
per shape, where they are, how many), whose 128-d penultimate layer is the feature. It needs no
download, and it separates real scenes from noise and from untrained samples by a wide margin
(tests/eval/test_fid.py). The reference statistics of the real data (the val split rendered at a
resolution) are computed once and cached per feature weights, dataset and resolution.

**Inception FID** (the published metric) needs torch-fidelity (the ``fid`` extra; it imports
torchvision, which must match your torch) and the FID Inception weights file
``pt_inception-2015-12-05-6726825d.pth`` at a local path. Without them it fails with a message
that says what to provide.

Example::

    from workbench.eval.fid import fid_proxy
    fid_proxy(images_uint8, resolution=64)        # float, lower is better; 0 for the reference itself
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.shapes import COLOURS, SHAPES, Scene, make_scenes, render_scene
from ..diffusion import DEFAULT_SAMPLER
from ..io import digest
from .detector import ASSETS, degrade
from ..errors import InputError, MissingFileError

FEATURE_WEIGHTS = ASSETS / "scene_features.safetensors"
FEATURE_SIDE = 32                      # every image is resized to this side before the feature net
PROXY_LABEL = "FID-proxy (shapes features), not comparable with published FID"
INCEPTION_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"


# ---------------------------------------------------------------------------------------------
#  The feature network
# ---------------------------------------------------------------------------------------------

def scene_targets(scene: Scene) -> np.ndarray:
    """What the feature net learns to predict: objects per colour (8) and per shape (6), occupancy of a
    4x4 grid by object centres (16) and the object count (1); (31,) float32."""
    t = np.zeros(len(COLOURS) + len(SHAPES) + 16 + 1, np.float32)
    colours, shapes = list(COLOURS), list(SHAPES)
    for o in scene.objects:
        t[colours.index(o.colour)] += 1
        t[len(colours) + shapes.index(o.shape)] += 1
        cell = min(3, int(o.cy * 4)) * 4 + min(3, int(o.cx * 4))
        t[len(colours) + len(shapes) + cell] = 1
    t[-1] = len(scene.objects)
    return t


class SceneFeatureNet(nn.Module):
    """(N, 3, 32, 32) float in [-1, 1] -> (N, 31) scene targets; ``features`` gives the (N, 128) penultimate layer."""

    num_features = 128

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),             # (N, 128, 4, 4)
            nn.Flatten(), nn.Linear(128 * 16, 128), nn.ReLU(),
        )
        self.head = nn.Linear(128, 31)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 32, 32) -> (N, 128)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 32, 32) -> (N, 31) predicted scene targets."""
        return self.head(self.body(x))


def to_feature_input(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 images (N, H, W, 3) array or (N, 3, H, W) tensor -> float (N, 3, 32, 32) in [-1, 1] (area resize)."""
    x = torch.as_tensor(np.asarray(images)) if isinstance(images, np.ndarray) else images
    if x.shape[-1] == 3 and x.shape[1] != 3:
        x = x.permute(0, 3, 1, 2)                                                        # (N, 3, H, W)
    x = x.float() / 127.5 - 1.0
    if x.shape[-1] != FEATURE_SIDE:
        x = F.interpolate(x, size=(FEATURE_SIDE, FEATURE_SIDE), mode="area" if x.shape[-1] > FEATURE_SIDE
                          else "bilinear")
    return x


class ShapesFeatures(nn.Module):
    """The FID-proxy feature extractor for torchmetrics: uint8 (N, 3, H, W) -> (N, 128) float features."""

    num_features = SceneFeatureNet.num_features

    def __init__(self, weights: str | Path | None = None):
        super().__init__()
        from safetensors.torch import load_file

        path = Path(weights) if weights is not None else FEATURE_WEIGHTS
        if not path.is_file():
            raise MissingFileError(f"FID-proxy feature weights not found at {path}; train them with "
                                    f"`workbench train-detector --features-out {path}`")
        self.net = SceneFeatureNet()
        self.net.load_state_dict(load_file(str(path)))
        self.net.eval().requires_grad_(False)
        self.weights_hash = digest(path.read_bytes())

    def train(self, mode: bool = True) -> ShapesFeatures:
        """Always in eval mode (a frozen feature extractor)."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> (N, 128)."""
        return self.net.features(to_feature_input(images))


def train_feature_net(n_scenes: int = 20000, epochs: int = 6, batch: int = 128, lr: float = 2e-3, seed: int = 0,
                      out: str | Path | None = None, progress: bool = True) -> tuple[SceneFeatureNet, dict]:
    """Train ``SceneFeatureNet`` on rendered train scenes (32 and 64 px, some degraded); optionally save it."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    scenes = make_scenes(n_scenes, "train", seed=seed + 7)
    images = []
    for i, scene in enumerate(scenes):
        img = render_scene(scene, 32 if i % 2 == 0 else 64)
        if rng.random() < 0.3:
            img = degrade(img, blur=float(rng.uniform(0, 1.0)), noise=float(rng.uniform(0, 12)), rng=rng)
        images.append(to_feature_input(img[None])[0])
    x = torch.stack(images)                                                             # (N, 3, 32, 32)
    y = torch.from_numpy(np.stack([scene_targets(s) for s in scenes]))                  # (N, 31)
    model = SceneFeatureNet()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(x) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(total=steps, desc="scene features", disable=not progress)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch):
            idx = order[i:i + batch]
            loss = F.mse_loss(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()
    model.eval().requires_grad_(False)
    report = {"scenes": n_scenes, "epochs": epochs, "final_loss": round(loss.item(), 5),
              "seconds": round(time.perf_counter() - t0, 1)}
    if out is not None:
        from safetensors.torch import save

        from ..io import atomic_write_bytes

        atomic_write_bytes(out, save({k: v.contiguous() for k, v in model.state_dict().items()}))
    return model, report


# ---------------------------------------------------------------------------------------------
#  Metrics
# ---------------------------------------------------------------------------------------------

def cache_dir() -> Path:
    """Where reference statistics are cached: ``$WORKBENCH_CACHE`` or ``~/.cache/workbench``, then ``fid/``."""
    return Path(os.environ.get("WORKBENCH_CACHE") or Path.home() / ".cache" / "workbench") / "fid"


def _reference_key(features: ShapesFeatures, resolution: int, n: int, split: str, seed: int) -> str:
    return f"shapes-{split}-s{seed}-n{n}-r{resolution}-f{features.weights_hash}"


def reference_images(resolution: int, n: int = 2000, split: str = "val", seed: int = 0) -> np.ndarray:
    """The real images the FID-proxy compares against: ``n`` shapes scenes of ``split`` at ``resolution``."""
    from ..data.shapes import shapes_arrays

    return shapes_arrays(n, resolution=resolution, split=split, seed=seed)[0]


def fid_proxy_metric(resolution: int, n_reference: int = 2000, split: str = "val", seed: int = 0,
                     features: ShapesFeatures | None = None, use_cache: bool = True):
    """A torchmetrics ``FrechetInceptionDistance`` on shapes features with the real statistics already in.

    The real side holds ``n_reference`` rendered ``split`` scenes at ``resolution``; its states are
    cached (``cache_dir()``), keyed by the feature weights' hash, the dataset and the resolution.
    Add generated images with ``metric.update(uint8 (N, 3, H, W), real=False)``, then ``compute()``.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    from ..io import atomic_write_bytes

    features = features or ShapesFeatures()
    metric = FrechetInceptionDistance(feature=features, reset_real_features=False, normalize=False)
    path = cache_dir() / f"{_reference_key(features, resolution, n_reference, split, seed)}.pt"
    names = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")
    if use_cache and path.is_file():
        state = torch.load(path, weights_only=True)
        for name in names:
            setattr(metric, name, state[name])
        return metric
    images = reference_images(resolution, n_reference, split, seed)
    for i in range(0, len(images), 256):
        metric.update(torch.from_numpy(images[i:i + 256]).permute(0, 3, 1, 2), real=True)
    if use_cache:
        import io

        buf = io.BytesIO()
        torch.save({name: getattr(metric, name) for name in names}, buf)
        atomic_write_bytes(path, buf.getvalue())
    return metric


def fid_proxy(images: np.ndarray, resolution: int | None = None, n_reference: int = 2000, **kw) -> float:
    """FID-proxy of uint8 images (N, H, W, 3) against ``n_reference`` real shapes scenes at their resolution."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or len(images) < 2:
        raise InputError(f"expected at least 2 uint8 images shaped (N, H, W, 3), got {images.dtype} {images.shape}")
    metric = fid_proxy_metric(resolution or images.shape[1], n_reference, **kw)
    for i in range(0, len(images), 256):
        metric.update(torch.from_numpy(images[i:i + 256]).permute(0, 3, 1, 2), real=False)
    return float(metric.compute())


def inception_fid_metric(weights_path: str | Path | None):
    """torchmetrics' Inception FID (2048-d pool features) from a local weights file; clear errors without it."""
    if not weights_path:
        raise MissingFileError(f"Inception FID needs the FID Inception weights at a local path: download "
                                f"{INCEPTION_WEIGHTS_NAME} (torch-fidelity's release of the TF-FID weights) and pass "
                                f"--inception-weights PATH; offline, use the FID-proxy (the default)")
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise MissingFileError(f"Inception weights not found at {path}: expected the file {INCEPTION_WEIGHTS_NAME}")
    try:
        import torch_fidelity  # noqa: F401
    except Exception as err:    # not installed, or its torchvision does not match this torch
        raise ModuleNotFoundError(f"Inception FID needs torch-fidelity with a torchvision that matches your torch "
                                  f"(pip install 'microdit-workbench[fid]'); it failed to import: {err}. Offline, "
                                  f"use the FID-proxy (the default)") from err
    from torchmetrics.image.fid import FrechetInceptionDistance

    return FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(path), normalize=False)


def add_generated(metric, bundle, samples: int, steps: int, cfg_scale: float, sampler: str = DEFAULT_SAMPLER,
                  seed: int = 0,
                  batch: int = 50, progress: bool = True) -> None:
    """Sample ``samples`` images of val-split captions (scene seed ``seed + 1``) and add them as fakes to ``metric``.

    Each image's noise is seeded by ``seed`` and its index, so the same protocol gives the same images.
    """
    from tqdm.auto import tqdm

    captions = [s.caption for s in make_scenes(samples, "val", seed=seed + 1)]
    bar = tqdm(total=samples, desc="sampling for FID", unit="img", disable=not progress)
    for i in range(0, samples, batch):
        chunk = captions[i:i + batch]
        images = bundle.sample(chunk, steps=steps, cfg_scale=cfg_scale, sampler=sampler,
                               seeds=[seed * 1_000_003 + i + k for k in range(len(chunk))])  # (b, H, W, 3) uint8
        metric.update(torch.from_numpy(images).permute(0, 3, 1, 2), real=False)
        bar.update(len(chunk))
    bar.close()


def evaluate_fid_checkpoint(spec: str | Path, samples: int = 500, steps: int = 30, cfg_scale: float | None = None,
                            seed: int = 0, sampler: str = DEFAULT_SAMPLER, batch: int = 50, n_reference: int = 2000,
                            inception_weights: str | Path | None = None, use_ema: bool = True,
                            device: str | None = None, progress: bool = True) -> dict:
    """Sample ``samples`` images of training-distribution captions (val split) from a checkpoint; FID against real.

    Returns ``{"metric", "value", "protocol", "seconds"}``. The metric is the FID-proxy unless
    ``inception_weights`` is given.
    """
    from ..train.inference import load_for_sampling

    t0 = time.perf_counter()
    bundle = load_for_sampling(spec, use_ema=use_ema, device=device)
    cfg_scale = bundle.default_cfg_scale if cfg_scale is None else float(cfg_scale)
    if inception_weights:
        metric = inception_fid_metric(inception_weights)
        for i in range(0, n_reference, 256):
            real = reference_images(bundle.resolution, n_reference, seed=seed)[i:i + 256]
            metric.update(torch.from_numpy(real).permute(0, 3, 1, 2), real=True)
        label = "Inception FID (2048-d pool3)"
    else:
        metric = fid_proxy_metric(bundle.resolution, n_reference, seed=seed)
        label = PROXY_LABEL
    add_generated(metric, bundle, samples, steps=steps, cfg_scale=cfg_scale, sampler=sampler, seed=seed,
                  batch=batch, progress=progress)
    protocol = {"checkpoint": str(bundle.checkpoint), "weights_sha256": bundle.weights_hash, "ema": bundle.ema,
                "samples": samples, "reference": f"shapes val split, {n_reference} images at {bundle.resolution} px",
                "captions": f"shapes val split captions (seed {seed + 1})", "steps": steps, "cfg_scale": cfg_scale,
                "seed": seed, "sampler": sampler, "resolution": bundle.resolution}
    return {"metric": label, "value": round(float(metric.compute()), 4), "protocol": protocol,
            "seconds": round(time.perf_counter() - t0, 1)}
