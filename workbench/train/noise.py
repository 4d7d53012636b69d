"""Per-sample training randomness: one generator per (stage seed, step, dataset row).

Every sample's noise level, noise, patch mask and caption dropout come from it, so a sample does not
depend on how the global batch is split over processes and micro-batches, and a resumed run repeats
the uninterrupted one exactly::

    sigma, noise, mask_noise, drop = draw_sample_noise(rows, step, stage, stage.edm, (3, 16, 16), tokens=64)
"""

from __future__ import annotations

import torch

from ..diffusion import EDMConfig, draw_training_sigmas


def sample_seed(seed: int, step: int, row: int) -> int:
    """A 63-bit seed for one training sample, from the stage seed, the step and the dataset row."""
    return (((seed * 1_000_003 + step) * 2_654_435_761) ^ (row * 40_503 + 0x9E3779B97F4A7C15)) % (2 ** 63)


def draw_sample_noise(rows, step: int, stage, edm: EDMConfig, shape: tuple[int, int, int], tokens: int):
    """Per-sample sigma (B,), noise (B, C, H, W), mask noise (B, T) and caption-drop flags (B,)."""
    sigmas, noises, mask_noises, drops = [], [], [], []
    for row in rows:
        gen = torch.Generator().manual_seed(sample_seed(stage.seed, step, int(row)))
        sigmas.append(draw_training_sigmas(1, edm, gen)[0])                        # EDM's ln σ ~ N(P_mean, P_std²)
        noises.append(torch.randn(shape, generator=gen))
        mask_noises.append(torch.rand(tokens, generator=gen))
        drops.append(torch.rand((), generator=gen) < stage.caption_dropout)
    return torch.stack(sigmas), torch.stack(noises), torch.stack(mask_noises), torch.stack(drops)
