"""Train a latent codec on the project's own data: a small diffusers ``AutoencoderKL``.

The paper trains in the latent space of a pretrained VAE (the SDXL VAE: 4 channels, 8x down). Users
without a hub, and the CPU demo, need one trained on their own images. ``train_codec`` trains a small
``AutoencoderKL`` (downsample f = 2^(levels-1)) with an L1 + L2 reconstruction loss, a small KL
term and latent-noise augmentation, so that its decoder draws clean edges from the approximate
latents a diffusion model samples. It saves with ``save_pretrained``, so ``open_codec("vae:DIR")``
(and ``prepare --codec vae:DIR``) load it like any other VAE. Its ``scaling_factor`` and
``shift_factor`` are measured on the data so that latents have zero mean and unit variance.

Images come from the embedded shapes renderer (32 px scenes and 32 px crops of 64 px scenes, so
both scales are seen) or from a prepared / image-folder source through ``images=``.

Example::

    from workbench.train.codec import CodecConfig, train_codec
    report = train_codec(CodecConfig(steps=1500), out="codecs/shapes-f4")
    codec = open_codec("vae:codecs/shapes-f4")     # 4 channels, f=4: 64 px -> 16x16 latents
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import require, to_dict


@dataclass
class CodecConfig:
    """What ``train_codec`` builds and how it trains it."""

    latent_channels: int = 4                   # latent channels C
    block_out_channels: tuple[int, ...] = (32, 64, 128)   # one entry per level: f = 2^(len-1)
    layers_per_block: int = 1                  # ResNet blocks per level
    steps: int = 1500                          # optimiser steps
    batch: int = 32                            # 32x32 training crops per step
    lr: float = 2e-3                           # AdamW peak LR (one-cycle)
    kl_weight: float = 1e-6                    # weight of the KL term (keeps latents bounded)
    latent_noise: float = 0.1                  # decoder input noise, x the latents' std (augmentation)
    crop: int = 32                             # training crop side, pixels
    resolutions: tuple[int, ...] = (32, 64)    # scene resolutions the crops come from
    seed: int = 0

    def __post_init__(self) -> None:
        own = type(self).__name__
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        self.resolutions = tuple(int(r) for r in self.resolutions)
        for name in ("latent_channels", "layers_per_block", "steps", "batch", "crop"):
            value = getattr(self, name)
            require(isinstance(value, int) and value > 0, own, name, "a positive integer", value)
        require(len(self.block_out_channels) >= 2 and all(c > 0 and c % 16 == 0 for c in self.block_out_channels),
                own, "block_out_channels", "two or more positive multiples of 16", self.block_out_channels)
        require(self.lr > 0, own, "lr", "a positive number", self.lr)
        require(self.kl_weight >= 0 and self.latent_noise >= 0, own, "kl_weight/latent_noise", "numbers >= 0",
                (self.kl_weight, self.latent_noise))
        require(all(r >= self.crop for r in self.resolutions), own, "resolutions", f"sides >= crop={self.crop}",
                self.resolutions)
        require(self.crop % self.downsample == 0, own, "crop", f"a multiple of the downsample {self.downsample}",
                self.crop)

    @property
    def downsample(self) -> int:
        """The codec's downsample factor f."""
        return 2 ** (len(self.block_out_channels) - 1)


def build_autoencoder(cfg: CodecConfig):
    """A fresh diffusers ``AutoencoderKL`` of ``cfg``'s shape (no mid-block attention: conv only)."""
    from diffusers import AutoencoderKL

    levels = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=cfg.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block,
        norm_num_groups=16, sample_size=cfg.crop, mid_block_add_attention=False,
    )


def shapes_crops(cfg: CodecConfig, step: int, batch: int | None = None) -> np.ndarray:
    """Training crops of step ``step``: uint8 (B, crop, crop, 3) from train-split scenes, seeded by (seed, step)."""
    from ..data.shapes import make_scene, render_scene, scene_rng

    batch = batch or cfg.batch
    rng = np.random.default_rng([cfg.seed, step])
    out = np.empty((batch, cfg.crop, cfg.crop, 3), np.uint8)
    for i in range(batch):
        res = int(cfg.resolutions[i % len(cfg.resolutions)])
        scene = make_scene(scene_rng(cfg.seed, "train", step * batch + i))
        img = render_scene(scene, res)
        y, x = rng.integers(0, res - cfg.crop + 1, size=2)
        out[i] = img[y:y + cfg.crop, x:x + cfg.crop]
    return out


def _to_unit(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0       # (B, 3, H, W) in [-1, 1]


@torch.no_grad()
def latent_statistics(vae, images: np.ndarray) -> tuple[float, float]:
    """Mean and std of the posterior means of ``images`` (uint8 (B, H, W, 3)): the shift and 1/scaling."""
    z = vae.encode(_to_unit(images)).latent_dist.mean                               # (B, C, h, w)
    return float(z.mean()), float(z.std())


def train_codec(cfg: CodecConfig | None = None, out: str | Path | None = None, *,
                images: Callable[[int], np.ndarray] | None = None, progress: bool = True) -> dict:
    """Train an ``AutoencoderKL`` codec (see the module docstring); save it to ``out`` when given.

    ``images(step)`` may supply each step's uint8 (B, crop, crop, 3) batch (default: shapes crops).
    Returns a report: steps, seconds, final losses, PSNR on held-out val scenes at each resolution,
    the measured scaling and shift factors, and the output folder.
    """
    from tqdm.auto import tqdm

    cfg = cfg or CodecConfig()
    torch.manual_seed(cfg.seed)
    vae = build_autoencoder(cfg)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    batches = images or (lambda s: shapes_crops(cfg, s))
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc="codec", disable=not progress)
    history = []
    for step in bar:
        x = _to_unit(batches(step))                                                   # (B, 3, H, W)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)       # (B, C, h, w)
        if cfg.latent_noise:
            scale = z.detach().std() * cfg.latent_noise
            z = z + scale * torch.rand(len(z), 1, 1, 1, generator=gen) * torch.randn(z.shape, generator=gen)
        recon = vae.decode(z).sample                                                  # (B, 3, H, W)
        rec = F.l1_loss(recon, x) + F.mse_loss(recon, x)
        kl = post.kl().mean() / x[0].numel()
        loss = rec + cfg.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == cfg.steps - 1:
            history.append({"step": step, "recon": rec.item(), "kl": kl.item()})
            bar.set_postfix(recon=f"{rec.item():.4f}")
    bar.close()
    vae.eval().requires_grad_(False)
    from ..data.shapes import shapes_arrays

    stats_images, _ = shapes_arrays(256, resolution=cfg.crop, split="train", seed=cfg.seed + 1)
    shift, std = latent_statistics(vae, stats_images)
    vae.register_to_config(scaling_factor=1.0 / std, shift_factor=shift)
    report = {"config": to_dict(cfg), "seconds": round(time.perf_counter() - t0, 1), "history": history,
              "scaling_factor": 1.0 / std, "shift_factor": shift,
              "val_psnr": {str(r): round(reconstruction_psnr(vae, r), 2) for r in cfg.resolutions}}
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        vae.save_pretrained(tmp, safe_serialization=True)
        if out.exists():
            import shutil

            shutil.rmtree(out)
        tmp.rename(out)
        report["out"] = str(out)
    return report


@torch.no_grad()
def reconstruction_psnr(vae, resolution: int, n: int = 64, seed: int = 0) -> float:
    """PSNR (dB) of encode (posterior mean) -> decode on ``n`` val-split scenes at ``resolution``."""
    from ..data.shapes import shapes_arrays

    images, _ = shapes_arrays(n, resolution=resolution, split="val", seed=seed)
    x = _to_unit(images)
    recon = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    mse = F.mse_loss(recon, x).item() / 4.0                                           # in [0, 1] units
    return 10 * math.log10(1.0 / max(mse, 1e-12))
