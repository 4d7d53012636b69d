"""EDM (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models").

The network F never sees raw noisy data. ``precondition`` wraps it into the denoiser

    D(x; σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x, ln σ / 4, caption)

and ``EDMLoss`` trains D with the λ(σ)-weighted squared error at noise levels ln σ ~ N(P_mean, P_std²).
With patch masking (MicroDiT) the loss counts only the patches the backbone kept::

    loss_fn = EDMLoss(EDMConfig())
    out = loss_fn(model, latents, caption, caption_mask, mask_ratio=0.75)
    out.loss.backward()
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..config import POSITIVE, check_field_types, check_ranges, require
from ..errors import InputError

# Edges of the σ bins used by `loss_per_sigma_bin` (σ_min ... σ_max of the paper).
DEFAULT_SIGMA_BIN_EDGES = (0.002, 0.1, 0.5, 1.0, 2.0, 5.0, 80.0)


# -----------------------------------------------------------------------------
# Configuration

@dataclass
class EDMConfig:
    """EDM constants of the paper (256 px stages; the 512 px stages use p_mean=0.0, p_std=0.6)."""

    sigma_data: float = 0.9   # std of the data (latents); sets c_skip, c_out, c_in and λ
    sigma_min: float = 0.002  # smallest σ of the sampling schedule
    sigma_max: float = 80.0   # largest σ of the sampling schedule (the initial noise std)
    rho: float = 7.0          # curvature of the Karras σ schedule
    p_mean: float = -0.6      # training noise: mean of ln σ
    p_std: float = 1.2        # training noise: std of ln σ
    band_weight: float = 1.0  # loss weight of the σ in [band_min, band_max], times λ(σ) (1: EDM's weighting alone)
    band_min: float = 1.0     # the band where a shapes scene's outline is decided (docs/demo.md, the shape probe)
    band_max: float = 6.0

    def __post_init__(self):
        check_field_types(self)
        check_ranges(self, {name: POSITIVE for name in ("sigma_data", "sigma_min", "sigma_max", "rho", "p_std",
                                                        "band_weight", "band_min", "band_max")})
        require(self.sigma_min < self.sigma_max, "EDMConfig", "sigma_min", f"< sigma_max ({self.sigma_max!r})",
                self.sigma_min)
        require(self.band_min < self.band_max, "EDMConfig", "band_min", f"< band_max ({self.band_max!r})",
                self.band_min)


@dataclass
class LossOutput:
    """What `EDMLoss` returns: the scalar to backpropagate plus per-sample values for logging."""

    loss: torch.Tensor        # () mean over the batch
    per_sample: torch.Tensor  # (B,) λ-weighted error of each sample (over kept patches when masked)
    sigma: torch.Tensor       # (B,) the noise level each sample was trained at


# -----------------------------------------------------------------------------
# Preconditioning

def _unpack(out) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(F, keep) from a model output: a `MicroDiTOutput`-like object (.sample, .keep) or a bare tensor."""
    if isinstance(out, torch.Tensor):
        return out, None
    return out.sample, getattr(out, "keep", None)


def _param_dtype(model) -> torch.dtype | None:
    """The floating dtype of the model's parameters (None for parameter-free callables)."""
    params = getattr(model, "parameters", None)
    for p in (params() if params is not None else ()):
        if p.is_floating_point():
            return p.dtype
    return None


def edm_scalings(sigma, sigma_data: float):
    """EDM's scalings ``(c_skip, c_out, c_in)`` at noise level ``sigma`` (a float or a tensor).

    Karras et al. 2022, Table 1. These are numbers; ``precondition`` applies them around a network F
    to make the denoiser D.
    """
    total = sigma ** 2 + sigma_data ** 2
    return sigma_data ** 2 / total, sigma * sigma_data / total ** 0.5, 1 / total ** 0.5


def precondition(model, x: torch.Tensor, sigma, caption: torch.Tensor, caption_mask: torch.Tensor | None = None, *,
                 sigma_data: float, mask_ratio: float = 0.0, generator: torch.Generator | None = None,
                 mask_noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The EDM denoiser D(x; σ) = c_skip·x + c_out·F(c_in·x, ln σ / 4, caption), with the `edm_scalings`.

    ``sigma_data`` has no default: a wrong σ_data gives wrong images without an error, so the caller
    passes the one the model was trained with (``EDMConfig.sigma_data`` of its stage).

    Args:
        model: the network F, called as ``model(x_in, c_noise, caption, caption_mask=..., mask_ratio=...)``
            and returning a ``MicroDiTOutput`` (``.sample``, ``.keep``) or a tensor.
        x: (B, C, H, W) noisy input x0 + σ·n.
        sigma: noise level, a float, a scalar tensor or a (B,) tensor.
        caption: (B, L, D) caption token embeddings.
        caption_mask: (B, L) 1 for real tokens, or None.
        sigma_data: std of the data the model was trained on (required).
        mask_ratio: fraction of patches the model drops (training only).
        generator: when given, passed to the model to draw its patch mask (reproducible masking).
        mask_noise: when given, (B, T) uniform noise that defines the model's patch mask.

    Returns:
        ``(denoised, keep)``: denoised (B, C, H, W) in at least float32, and the model's (B, T) keep mask or None.
    """
    dtype = torch.promote_types(x.dtype, torch.float32)         # preconditioning in >= float32
    x = x.to(dtype)
    sigma = torch.as_tensor(sigma, dtype=dtype, device=x.device).reshape(-1)
    sigma = sigma.expand(x.shape[0])                            # (B,)
    s = sigma.view(-1, *([1] * (x.dim() - 1)))                  # (B, 1, 1, 1)
    c_skip, c_out, c_in = edm_scalings(s, sigma_data)           # (B, 1, 1, 1) each
    c_noise = sigma.log() / 4                                   # (B,)
    net_dtype = _param_dtype(model) or dtype
    extra = {k: v for k, v in (("generator", generator), ("mask_noise", mask_noise)) if v is not None}
    out = model((c_in * x).to(net_dtype), c_noise.to(net_dtype), caption,
                caption_mask=caption_mask, mask_ratio=mask_ratio, **extra)
    f_x, keep = _unpack(out)                                    # (B, C, H, W), (B, T) or None
    denoised = c_skip * x + c_out * f_x.to(dtype)               # (B, C, H, W)
    return denoised, keep


def draw_training_sigmas(batch: int, cfg: EDMConfig, generator: torch.Generator | None = None,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """Training noise levels: ln σ ~ N(p_mean, p_std²), shape (B,) float32 (the sampling schedule is `karras_sigmas`).

    Drawn on the generator's device (CPU when there is none), then moved to ``device``.
    """
    draw_device = generator.device if generator is not None else device
    rnd = torch.randn(batch, generator=generator, device=draw_device)  # (B,)
    return (rnd * cfg.p_std + cfg.p_mean).exp().to(device)


# -----------------------------------------------------------------------------
# Loss

def patch_loss(loss: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of an elementwise loss over the KEPT patches of each sample: (B, C, H, W), (B, T) -> (B,).

    The loss is averaged over channels and within each p×p patch, then over the kept patches.
    The patch size follows from the shapes: T = (H/p)·(W/p), patches in row-major order.
    """
    b, _, h, w = loss.shape
    t = keep.shape[1]
    p = round((h * w / t) ** 0.5)
    if p * p * t != h * w or h % p or w % p:
        raise InputError(f"keep has {t} patches, which does not tile a {h}x{w} loss with square patches")
    per_patch = F.avg_pool2d(loss.mean(1, keepdim=True), p).flatten(1)  # (B, T)
    keep = keep.to(per_patch.dtype)                                     # (B, T)
    return (per_patch * keep).sum(1) / keep.sum(1).clamp(min=1)         # (B,)


@dataclass
class EDMLoss:
    """EDM loss λ(σ)·‖D(x0 + σn; σ) − x0‖² with λ = (σ² + σ_data²)/(σ·σ_data)².

    ``config.band_weight`` ≠ 1 multiplies λ(σ) by that factor for σ in [band_min, band_max] (a lever, off by
    default): more weight where the outline is decided, without moving the noise distribution as P_mean does.
    Averaged over all elements of each sample, or, when the model masks patches, per patch and then
    over the kept patches of each sample (as the official code); then over the batch.
    """

    config: EDMConfig = field(default_factory=EDMConfig)  # σ_data and the training noise distribution

    def __call__(self, model, x0: torch.Tensor, caption: torch.Tensor, caption_mask: torch.Tensor | None = None,
                 mask_ratio: float = 0.0, generator: torch.Generator | None = None, *,
                 sigma: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                 mask_noise: torch.Tensor | None = None) -> LossOutput:
        """Loss of ``model`` on clean data x0 (B, C, H, W); ``generator`` fixes σ, the noise and the patch mask.

        ``sigma`` (B,), ``noise`` (B, C, H, W) standard normal and ``mask_noise`` (B, T) may be given
        instead of drawn (the trainer draws them per sample, so results do not depend on batching).
        """
        cfg, sd = self.config, self.config.sigma_data
        x0 = x0.to(torch.promote_types(x0.dtype, torch.float32))            # (B, C, H, W)
        if sigma is None:
            sigma = draw_training_sigmas(x0.shape[0], cfg, generator, x0.device)  # (B,)
        sigma = sigma.to(x0.device, x0.dtype)
        if noise is None:
            draw_device = generator.device if generator is not None else x0.device
            noise = torch.randn(x0.shape, generator=generator, device=draw_device, dtype=x0.dtype)
        n = noise.to(x0.device, x0.dtype)                                   # (B, C, H, W)
        s = sigma.view(-1, 1, 1, 1)                                         # (B, 1, 1, 1)
        weight = (s ** 2 + sd ** 2) / (s * sd) ** 2                         # (B, 1, 1, 1)
        if cfg.band_weight != 1.0:
            in_band = (s >= cfg.band_min) & (s <= cfg.band_max)             # (B, 1, 1, 1)
            weight = torch.where(in_band, weight * cfg.band_weight, weight)
        denoised, keep = precondition(model, x0 + n * s, sigma, caption, caption_mask, sigma_data=sd,
                                      mask_ratio=mask_ratio, generator=generator, mask_noise=mask_noise)
        loss = weight * (denoised - x0) ** 2                                # (B, C, H, W)
        per_sample = loss.flatten(1).mean(1) if keep is None else patch_loss(loss, keep)  # (B,)
        return LossOutput(loss=per_sample.mean(), per_sample=per_sample, sigma=sigma)


def sigma_bin_sums(per_sample: torch.Tensor, sigma: torch.Tensor, edges=DEFAULT_SIGMA_BIN_EDGES) -> torch.Tensor:
    """Per σ bin ``[edges[i], edges[i+1])``: the sum of the losses and their count, (n_bins, 2), on their device.

    No value is read back to the host, so a training step can keep it until its metrics are logged.
    """
    per_sample, sigma = per_sample.detach().flatten().float(), sigma.detach().flatten().float()  # (B,), (B,)
    index = sum((sigma >= edge).long() for edge in edges) - 1          # (B,) bin of each σ; -1 or n_bins outside
    #       (compared with Python numbers: no table of edges copied to the device)
    values = torch.stack([per_sample, torch.ones_like(per_sample)], dim=1)                      # (B, 2)
    # rows 0 and n_bins + 1 collect the σ outside the edges, and are dropped
    return torch.zeros(len(edges) + 1, 2, device=sigma.device).index_add_(0, index + 1, values)[1:-1]  # (n_bins, 2)


def sigma_bin_means(sums, edges=DEFAULT_SIGMA_BIN_EDGES) -> dict[str, float]:
    """``sigma_bin_sums``' rows (a tensor or nested lists) as ``{"0.002-0.1": mean, ...}``; empty bins left out."""
    rows = sums.tolist() if torch.is_tensor(sums) else sums
    return {f"{lo:g}-{hi:g}": total / count for (lo, hi), (total, count) in zip(zip(edges[:-1], edges[1:]), rows)
            if count > 0}


def loss_per_sigma_bin(per_sample: torch.Tensor, sigma: torch.Tensor,
                       edges=DEFAULT_SIGMA_BIN_EDGES) -> dict[str, float]:
    """Mean loss per σ bin, e.g. ``{"0.002-0.1": 1.3, "0.1-0.5": 0.8, ...}`` for logging.

    Bins are ``[edges[i], edges[i+1])``; empty bins and σ outside ``[edges[0], edges[-1])`` are left out.
    """
    return sigma_bin_means(sigma_bin_sums(per_sample, sigma, edges), edges)
