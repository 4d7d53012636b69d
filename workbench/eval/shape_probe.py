"""The shape probe: does the denoiser use the caption's shape word? A deterministic, shape-sensitive metric.

At small budgets the sampled shape accuracy sits at chance and is noisy (14 single-object prompts), and the
held-out loss is dominated by colour, position and background (docs/demo.md). The probe asks the denoiser
directly. On ``n`` single-object scenes of the shapes **val** split it computes EDM's loss at mid σ, where
an object's outline is not yet visible in the noisy image and must come from the caption, once with the true
caption and once with the shape word replaced by each of the other five shapes ("a large green circle" →
"a large green star", ...), with the same fixed noise:

- ``accuracy``: the fraction of scenes whose true caption gives the lowest loss summed over the σ (the model
  used as a zero-shot shape classifier, as in Li et al. 2023, "Your Diffusion Model is Secretly a Zero-Shot
  Classifier"); a tie counts as 1/k. A model that ignores shape words scores exactly 1/6;
- ``gap``: the mean, over scenes, of (mean loss with a wrong shape − loss with the true shape). It is 0 for a
  model that ignores shape words and grows as the model's predictions take the named outline.

Both are deterministic functions of the weights. Example::

    from workbench.eval.shape_probe import checkpoint_shape_probe
    result = checkpoint_shape_probe("workbench/assets/reference")
    result["accuracy"], result["gap"]          # 0.354, 0.0064   (chance: 1/6 and 0)

``workbench eval shape-probe CKPT [--json]`` prints the same numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.shapes import SHAPES, make_scene, render_scene, scene_rng
from ..diffusion import EDMConfig, EDMLoss
from ..errors import InputError
from .heldout import row_noise

SIGMAS = (1.0, 2.5, 6.0)      # mid noise: the object's position is visible in x_σ, its outline is not
N = 96                        # single-object val scenes


def protocol(n: int = N, seed: int = 0, sigmas=SIGMAS) -> dict:
    """How a shape probe was computed (recorded next to every value)."""
    return {"metric": "EDM loss with the true caption vs the shape word swapped for each other shape",
            "scenes": n, "split": "shapes val, single-object template", "sigmas": [float(s) for s in sigmas],
            "noise_seed": seed, "classes": list(SHAPES), "chance_accuracy": 1 / len(SHAPES),
            "weights": "EMA when kept"}


def probe_scenes(n: int = N, seed: int = 0) -> list:
    """The probe's ``n`` single-object scenes of the shapes val split (never rendered for training)."""
    if n <= 0:
        raise InputError(f"shape probe: n must be positive, got {n}")
    return [make_scene(scene_rng(seed, "val", i), {"single": 1.0}) for i in range(n)]


def swapped_captions(scenes, shape: str) -> list[str]:
    """Each scene's caption with its object's shape word replaced by ``shape`` (the true caption for its shape)."""
    return [scene.caption.replace(scene.objects[0].shape, shape) for scene in scenes]


@torch.no_grad()
def probe_losses(model, x0: torch.Tensor, captions: list, sigmas, sigma_data: float, noise: torch.Tensor,
                 batch: int = 64) -> torch.Tensor:
    """EDM loss (K, S, N) of ``model`` for each of K caption sets ``(states (N, L, D), mask (N, L))`` at S σ."""
    loss_fn, device = EDMLoss(EDMConfig(sigma_data=sigma_data)), next(model.parameters()).device
    losses = torch.zeros(len(captions), len(sigmas), len(x0))                        # (K, S, N)
    for k, (states, mask) in enumerate(captions):
        for j, sigma in enumerate(sigmas):
            for lo in range(0, len(x0), batch):
                rows = slice(lo, lo + batch)
                sig = torch.full((len(x0[rows]),), float(sigma), device=device)      # (b,)
                out = loss_fn(model, x0[rows].to(device), states[rows].to(device), mask[rows].to(device),
                              sigma=sig, noise=noise[rows].to(device))
                losses[k, j, rows] = out.per_sample.float().cpu()
    return losses


def summarise_probe(losses: torch.Tensor, truth: torch.Tensor, sigmas) -> dict:
    """Accuracy and gap from probe losses (K, S, N) and the true class of each scene (N,)."""
    k, n = losses.shape[0], losses.shape[2]
    rows = torch.arange(n)

    def accuracy(loss: torch.Tensor) -> float:                                       # loss (K, N)
        best = loss == loss.min(dim=0, keepdim=True).values                          # (K, N): ties all True
        return float((best[truth, rows].float() / best.sum(dim=0)).mean())

    def gap(loss: torch.Tensor) -> float:
        excess = loss.double() - loss[truth, rows].double()                          # (K, N): 0 at the truth
        return float((excess.sum(dim=0) / (k - 1)).mean())

    by_sigma = {f"{s:g}": {"accuracy": accuracy(losses[:, j]), "gap": gap(losses[:, j])}
                for j, s in enumerate(sigmas)}
    return {"accuracy": accuracy(losses.sum(dim=1)), "gap": gap(losses.mean(dim=1)), "by_sigma": by_sigma,
            "n": n, "chance": 1 / k}


def shape_probe(model, codec, text_encoder, resolution: int, sigma_data: float, n: int = N, sigmas=SIGMAS,
                seed: int = 0, batch: int = 64) -> dict:
    """The shape probe of ``model`` (see the module docstring); returns ``{accuracy, gap, by_sigma, n, chance}``.

    ``codec`` and ``text_encoder`` are the ones the model trained with (a ``load_for_sampling`` bundle's).

    Example::

        b = load_for_sampling("runs/demo/stage4")
        shape_probe(b.model, b.codec, b.text_encoder, b.resolution, b.edm.sigma_data)["accuracy"]
    """
    scenes = probe_scenes(n, seed)
    x0 = codec.encode(np.stack([render_scene(scene, resolution) for scene in scenes]))           # (N, C, h, w)
    noise = row_noise(x0.shape[1:], range(n), seed)                                               # (N, C, h, w)
    captions = [text_encoder.encode(swapped_captions(scenes, shape)) for shape in SHAPES]
    truth = torch.tensor([SHAPES.index(scene.objects[0].shape) for scene in scenes])              # (N,)
    was_training = model.training
    model.eval()
    try:
        losses = probe_losses(model, x0, captions, sigmas, sigma_data, noise, batch)
    finally:
        model.train(was_training)
    return summarise_probe(losses, truth, [float(s) for s in sigmas])


def bundle_shape_probe(bundle, **kw) -> dict:
    """``shape_probe`` of a sampling bundle (``load_for_sampling``, ``bundle_for_trainer``): its model, codec,
    text encoder, resolution and σ_data."""
    return shape_probe(bundle.model, bundle.codec, bundle.text_encoder, bundle.resolution, bundle.edm.sigma_data,
                       **kw)


def checkpoint_shape_probe(checkpoint: str | Path, use_ema: bool = True, device: str | None = "cpu", **kw) -> dict:
    """``shape_probe`` of a checkpoint, stage folder or exported model (EMA weights when it has them)."""
    from ..train.inference import load_for_sampling

    bundle = load_for_sampling(checkpoint, use_ema=use_ema, device=device)
    result = bundle_shape_probe(bundle, **kw)
    return {**result, "checkpoint": str(bundle.checkpoint), "ema": bundle.ema, "weights_sha256": bundle.weights_hash,
            "protocol": protocol(result["n"], kw.get("seed", 0), kw.get("sigmas", SIGMAS))}


def format_probe(result: dict) -> str:
    """The probe as a small table: accuracy and gap per σ, then both over all σ."""
    lines = [f"shape probe of {result.get('checkpoint', 'the model')} ({result['n']} single-object val scenes; "
             f"chance accuracy {result['chance']:.3f}, gap 0)"]
    lines += [f"  sigma {s:>5}  accuracy {v['accuracy']:.3f}  gap {v['gap']:+.5f}"
              for s, v in result["by_sigma"].items()]
    lines.append(f"  all σ        accuracy {result['accuracy']:.3f}  gap {result['gap']:+.5f}")
    return "\n".join(lines)
