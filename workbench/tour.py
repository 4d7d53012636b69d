"""The model tour: build a preset, show its parts and FLOPs, train it briefly, sample from it.

This is what ``workbench tour`` runs (``make demo`` runs the multi-stage pipeline). It overfits one
fixed random batch (latents, caption states, and the same noise levels, noise and patch masks at
every step), so the falling loss shows the model, the EDM loss and the optimiser working
together in seconds on a CPU::

    from workbench.tour import run_tour
    result = run_tour(steps=200)
    result["final_loss"] < result["initial_loss"]
"""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from .diffusion import EDMConfig, EDMLoss, sample
from .model import MicroDiT


def run_tour(preset: str = "nano", steps: int = 200, batch: int = 8, resolution: int = 32, mask_ratio: float = 0.75,
             lr: float = 1e-3, seed: int = 0, printer=print) -> dict:
    """Build ``preset``, print its summary and FLOPs, overfit one random batch, and sample once."""
    torch.manual_seed(seed)
    model = MicroDiT.from_preset(preset)
    cfg = model.arch
    printer(f"MicroDiT preset {preset!r} for {cfg.in_channels}x{resolution}x{resolution} inputs, "
            f"{cfg.caption_dim}-d captions\n{model.summary()}")
    for ratio in (0.0, mask_ratio):
        gflops = model.flops(resolution, ratio, batch) / 1e9
        printer(f"forward FLOPs at batch {batch}, mask {ratio:.2f}: {gflops:.2f} G")

    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, cfg.in_channels, resolution, resolution, generator=gen) * 0.9  # (B, C, H, W)
    caption = torch.randn(batch, 16, cfg.caption_dim, generator=gen)                             # (B, L, D)
    loss_fn = EDMLoss(EDMConfig())
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses, start = [], time.perf_counter()
    bar = tqdm(range(steps), desc=f"training {preset} on one random batch (mask {mask_ratio})")
    for _ in bar:
        fixed = torch.Generator().manual_seed(seed + 1)  # the same sigma, noise and mask every step
        loss = loss_fn(model, latents, caption, mask_ratio=mask_ratio, generator=fixed).loss
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
    elapsed = time.perf_counter() - start

    window = max(1, steps // 10)
    first, last = sum(losses[:window]) / window, sum(losses[-window:]) / window
    images = sample(model, caption[:2], steps=10, cfg_scale=2.0, seed=seed)
    printer(f"loss {first:.3f} -> {last:.3f} (mean of first/last {window} steps) in {elapsed:.1f} s "
            f"({steps * batch / elapsed:.1f} img/s); sampled {tuple(images.shape)}, "
            f"std {images.std().item():.2f}")
    return {"initial_loss": first, "final_loss": last, "seconds": elapsed, "samples": images}
