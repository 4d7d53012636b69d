"""The held-out denoising loss: EDM's loss on a fixed validation set, at fixed σ, with fixed noise, unmasked.

At small budgets it is the most sensitive measure of learning (the compositional score stays at chance
long after this loss has separated two recipes, docs/demo.md). Every number is deterministic: the same
checkpoint on the same validation set gives the same loss, so two recipes differ only by what they learnt::

    from workbench.eval.heldout import heldout_loss
    result = heldout_loss("runs/demo/stage1")   # shapes val split, prepared once with the checkpoint's codec
    result["mean"], result["by_sigma"]          # 0.17, {"0.02": 0.31, "0.05": 0.24, ...}

``workbench eval val-loss CKPT [--json]`` prints the same numbers.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..diffusion import EDMConfig, EDMLoss
from ..errors import InputError

# log-spaced over where EDM's training noise (ln σ ~ N(-0.6, 1.2²)) puts its weight, and a little beyond
SIGMAS = (0.02, 0.05, 0.15, 0.4, 1.0, 2.5, 6.0, 15.0)
VAL_N = 256                   # held-out scenes (the shapes source's val split)


def protocol(n: int = VAL_N, seed: int = 0, sigmas=SIGMAS) -> dict:
    """What a held-out loss was computed with (recorded next to every value)."""
    return {"metric": "EDM loss (sigma_data-weighted MSE of the denoised image), mean over rows and pixels",
            "sigmas": [float(s) for s in sigmas], "rows": n, "noise_seed": seed, "mask_ratio": 0.0,
            "split": "shapes val", "weights": "EMA when kept"}


def row_noise(shape, rows, seed: int = 0) -> torch.Tensor:
    """Standard normal noise (len(rows), *shape), row r drawn from its own generator seeded by (seed, r), so a
    row's noise does not depend on which batch it is in."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed * 1_000_003 + r))
                        for r in rows])


@torch.no_grad()
def model_heldout_loss(model, data: str | Path, resolution: int, sigma_data: float, sigmas=SIGMAS, n: int = VAL_N,
                       seed: int = 0, batch: int = 64) -> dict:
    """EDM loss of ``model`` on the first ``n`` rows of prepared ``data`` at each σ in ``sigmas``, unmasked.

    The noise of row r is drawn from a generator seeded by (seed, r), the same at every σ, so the loss
    is a deterministic function of the weights. Returns ``{"mean", "by_sigma", "n", "sigmas"}``.

    Example::

        result = model_heldout_loss(trainer.sampling_model(), "data/prepared/shapes_val", 16, 0.5)
    """
    from ..data.loader import PreparedLoader

    loader = PreparedLoader(data, resolution, batch, shuffle=False, drop_last=False, rank=0, world_size=1)
    loss_fn, was_training = EDMLoss(EDMConfig(sigma_data=sigma_data)), model.training
    model.eval()
    device = next(model.parameters()).device
    totals, seen = {float(s): 0.0 for s in sigmas}, 0
    try:
        for x0, caption, mask in loader:
            take = min(len(x0), n - seen)
            if take <= 0:
                break
            x0, caption, mask = x0[:take].to(device), caption[:take].to(device), mask[:take].to(device)
            noise = row_noise(x0.shape[1:], range(seen, seen + take), seed).to(device)    # (b, C, H, W)
            for s in totals:
                sigma = torch.full((take,), s, device=device)                             # (b,)
                totals[s] += loss_fn(model, x0, caption, mask, sigma=sigma, noise=noise).per_sample.sum().item()
            seen += take
    finally:
        model.train(was_training)
    if seen == 0:
        raise InputError(f"held-out loss: {data} has no rows at {resolution} px")
    by_sigma = {f"{s:g}": totals[s] / seen for s in totals}
    return {"mean": sum(by_sigma.values()) / len(by_sigma), "by_sigma": by_sigma, "n": seen, "sigmas": list(totals)}


def cache_dir() -> Path:
    """Where validation sets prepared for checkpoints live: ``$WORKBENCH_CACHE`` (or ``~/.cache/workbench``)/heldout."""
    return Path(os.environ.get("WORKBENCH_CACHE") or Path.home() / ".cache" / "workbench") / "heldout"


def val_data(codec, text_encoder, resolution: int, n: int = VAL_N, out: str | Path | None = None,
             progress: bool = False) -> Path:
    """The shapes val split, prepared once with ``codec`` and ``text_encoder`` (objects, as a checkpoint's
    ``load_for_sampling`` bundle holds them): ``out``, or a folder in ``cache_dir()`` keyed by those settings."""
    from ..data.prepare import prepare
    from ..io import fingerprint

    if out is None:
        key = fingerprint({"codec": codec.describe(), "text": text_encoder.describe(), "resolution": resolution,
                           "n": n})
        out = cache_dir() / f"shapes_val_{resolution}px_{n}_{key}"
    out = Path(out)
    prepare(source="shapes:val", out=out, codec=codec, text_encoder=text_encoder, resolutions=(resolution,),
            limit=n, n=n, progress=progress)
    return out


def heldout_loss(checkpoint: str | Path, data: str | Path | None = None, use_ema: bool = True,
                 device: str | None = "cpu", **kw) -> dict:
    """``model_heldout_loss`` of a checkpoint (EMA weights when it has them) at its own resolution and σ_data.

    ``data``: a prepared validation set; by default the shapes val split prepared with the checkpoint's own
    codec and text encoder (``val_data``, cached), so the loss is on the same kind of latents it trained on.
    """
    from ..train.inference import load_for_sampling

    bundle = load_for_sampling(checkpoint, use_ema=use_ema, device=device)
    if data is None:
        data = val_data(bundle.codec, bundle.text_encoder, bundle.resolution, kw.get("n", VAL_N))
    result = model_heldout_loss(bundle.model, data, bundle.resolution, bundle.edm.sigma_data, **kw)
    return {**result, "checkpoint": str(bundle.checkpoint), "data": str(data), "ema": bundle.ema,
            "weights_sha256": bundle.weights_hash,
            "protocol": protocol(result["n"], kw.get("seed", 0), kw.get("sigmas", SIGMAS))}


def format_heldout(result: dict) -> str:
    """The held-out loss as a small table: one line per σ, then the mean."""
    lines = [f"held-out loss of {result.get('checkpoint', 'the model')} ({'EMA' if result.get('ema') else 'raw'} "
             f"weights, {result['n']} val rows, unmasked, fixed noise)"]
    lines += [f"  sigma {sigma:>6}  {value:.5f}" for sigma, value in result["by_sigma"].items()]
    lines.append(f"  mean          {result['mean']:.5f}")
    return "\n".join(lines)


def val_loss_command(args) -> int:
    """``workbench eval val-loss CKPT [--json]``: the held-out loss of a checkpoint or stage folder."""
    import json

    from ..io import atomic_write_json

    checkpoint = args.target or args.checkpoint
    if not checkpoint:
        raise InputError("workbench eval val-loss needs a checkpoint or stage folder: workbench eval val-loss CKPT")
    result = heldout_loss(checkpoint, data=args.data, use_ema=not args.raw, device=args.device or "cpu",
                          n=args.n if args.n is not None else VAL_N, seed=args.seed)
    if args.json == "-":
        print(json.dumps(result, indent=2))
        return 0
    print(format_heldout(result))
    if args.json:
        atomic_write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0
