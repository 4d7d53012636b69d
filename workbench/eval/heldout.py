"""The held-out denoising loss: EDM's loss on a fixed validation set, at fixed σ, with fixed noise, unmasked.

At small budgets it is the most sensitive measure of learning (the compositional score stays at chance
long after this loss has separated two recipes). Every number is deterministic: the same checkpoint
on the same validation set gives the same loss, so two recipes differ only by what they learnt::

    from workbench.eval.heldout import heldout_loss
    result = heldout_loss("runs/demo/stage1", "data/prepared/shapes_val")
    result["mean"], result["by_sigma"]          # 0.17, {"0.05": 0.24, "0.15": 0.13, ...}
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..diffusion import EDMConfig, EDMLoss

# log-spaced over where EDM's training noise (ln σ ~ N(-0.6, 1.2²)) puts its weight
SIGMAS = (0.02, 0.05, 0.15, 0.4, 1.0, 2.5, 6.0, 15.0)


@torch.no_grad()
def model_heldout_loss(model, data: str | Path, resolution: int, sigma_data: float, sigmas=SIGMAS, n: int = 256,
                       seed: int = 0, batch: int = 64) -> dict:
    """EDM loss of ``model`` on the first ``n`` rows of prepared ``data`` at each σ in ``sigmas``.

    The noise of row r is drawn from a generator seeded by (seed, r), the same at every σ, so the loss
    is a deterministic function of the weights. Returns ``{"mean", "by_sigma", "n", "sigmas"}``.
    """
    from ..data.loader import PreparedLoader

    loader = PreparedLoader(data, resolution, batch, shuffle=False, drop_last=False, rank=0, world_size=1)
    loss_fn, was_training = EDMLoss(EDMConfig(sigma_data=sigma_data)), model.training
    model.eval()
    device = next(model.parameters()).device
    totals, seen = {float(s): 0.0 for s in sigmas}, 0
    for x0, caption, mask in loader:
        take = min(len(x0), n - seen)
        if take <= 0:
            break
        x0, caption, mask = x0[:take].to(device), caption[:take].to(device), mask[:take].to(device)
        noise = torch.stack([torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(seed * 1_000_003 + r))
                             for r in range(seen, seen + take)]).to(device)            # (b, C, H, W)
        for s in totals:
            sigma = torch.full((take,), s, device=device)
            totals[s] += loss_fn(model, x0, caption, mask, sigma=sigma, noise=noise).per_sample.sum().item()
        seen += take
    model.train(was_training)
    if seen == 0:
        raise ValueError(f"held-out loss: {data} has no rows at {resolution} px")
    by_sigma = {f"{s:g}": totals[s] / seen for s in totals}
    return {"mean": sum(by_sigma.values()) / len(by_sigma), "by_sigma": by_sigma, "n": seen, "sigmas": list(totals)}


def heldout_loss(checkpoint: str | Path, data: str | Path, use_ema: bool = True, **kw) -> dict:
    """``model_heldout_loss`` of a checkpoint (EMA weights when it has them) at its own resolution and σ_data."""
    from ..train.sampling import load_for_sampling

    bundle = load_for_sampling(checkpoint, use_ema=use_ema, device="cpu")
    result = model_heldout_loss(bundle.model, data, bundle.resolution, bundle.edm.sigma_data, **kw)
    return {**result, "checkpoint": str(bundle.checkpoint), "data": str(data), "ema": bundle.ema}
