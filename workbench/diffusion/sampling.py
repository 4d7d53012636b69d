"""EDM samplers in the k-diffusion style, classifier-free guidance, and the one-call `sample`.

A *denoiser* is any callable ``denoiser(x, sigma) -> denoised`` with x (B, C, H, W) and sigma (B,).
Every sampler has the same signature ``sampler(denoiser, x, sigmas, callback=None)``: x is the
initial noise already multiplied by ``sigmas[0]``, and ``callback(step, sigma, x, denoised)`` runs
after each step. The ODE arithmetic is float64 (as in EDM); the denoiser is called in float32::

    sigmas = karras_sigmas(30)                                  # (31,) float64, ends with 0
    x = torch.randn(4, 4, 32, 32, dtype=torch.float64) * sigmas[0]
    images = sample_heun(cfg_denoiser(model, caption, cfg_scale=5.0), x, sigmas)
"""

from __future__ import annotations

import torch

from workbench.diffusion.edm import EDMConfig, _param_dtype, precondition
from workbench.diffusion.schedulers import DIFFUSERS_SCHEDULERS, sample_with_diffusers
from workbench.model import null_caption, trim_caption_padding


# -----------------------------------------------------------------------------
# Noise schedule

def karras_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """The Karras et al. (2022) schedule: ``steps`` levels from σ_max to σ_min, then 0. Shape (steps+1,) float64."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps!r}")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64, device=device)          # (steps,)
    max_inv_rho, min_inv_rho = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho               # (steps,)
    return torch.cat([sigmas, sigmas.new_zeros(1)])                                  # (steps+1,)


# -----------------------------------------------------------------------------
# Samplers: one signature, a per-step callback

def _denoise(denoiser, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Call the denoiser in float32 with a (B,) sigma; return float64."""
    s = torch.full((x.shape[0],), sigma, dtype=torch.float32, device=x.device)  # (B,)
    return denoiser(x.to(torch.float32), s).to(torch.float64)


@torch.no_grad()
def sample_euler(denoiser, x: torch.Tensor, sigmas: torch.Tensor, callback=None) -> torch.Tensor:
    """Euler's method on the probability-flow ODE dx/dσ = (x − D(x; σ))/σ (Karras et al. 2022, Eq. 1)."""
    out_dtype, x = x.dtype, x.to(torch.float64)
    sigmas = sigmas.tolist()
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        denoised = _denoise(denoiser, x, sigma)
        x = x + (sigma_next - sigma) * (x - denoised) / sigma
        if callback is not None:
            callback(i, sigma, x, denoised)
    return x.to(out_dtype)


@torch.no_grad()
def sample_heun(denoiser, x: torch.Tensor, sigmas: torch.Tensor, callback=None) -> torch.Tensor:
    """Heun's 2nd-order deterministic sampler, Euler on the last step (Karras et al. 2022, Algorithm 2, S_churn=0)."""
    out_dtype, x = x.dtype, x.to(torch.float64)
    sigmas = sigmas.tolist()
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        denoised = _denoise(denoiser, x, sigma)
        d = (x - denoised) / sigma
        x_next = x + (sigma_next - sigma) * d
        if sigma_next > 0:                                   # 2nd-order correction
            d_next = (x_next - _denoise(denoiser, x_next, sigma_next)) / sigma_next
            x_next = x + (sigma_next - sigma) * (d + d_next) / 2
        x = x_next
        if callback is not None:
            callback(i, sigma, x, denoised)
    return x.to(out_dtype)


SAMPLERS = {
    "heun": sample_heun,
    "euler": sample_euler,
}
# Every name `sample` accepts: our samplers, then the diffusers schedulers driven through the adapter.
SAMPLER_NAMES = (*SAMPLERS, *DIFFUSERS_SCHEDULERS)


# -----------------------------------------------------------------------------
# Classifier-free guidance

def _cat_masks(mask: torch.Tensor | None, null_mask: torch.Tensor | None, batch: int,
               length: int) -> torch.Tensor | None:
    """Caption masks of the (cond, uncond) batch: (2B, L), or None when neither half has one."""
    if mask is None and null_mask is None:
        return None
    like = mask if mask is not None else null_mask
    ones = torch.ones(batch, length, dtype=like.dtype, device=like.device)  # (B, L)
    return torch.cat([ones if mask is None else mask, ones if null_mask is None else null_mask])


def cfg_denoiser(model, caption: torch.Tensor, caption_mask: torch.Tensor | None = None, cfg_scale: float = 5.0,
                 sigma_data: float = 0.9, uncond: tuple[torch.Tensor, torch.Tensor | None] | None = None):
    """A denoiser with classifier-free guidance: uncond + s·(cond − uncond).

    The unconditional caption is the null caption (all zeros), or ``uncond = (states, mask)`` of a
    negative prompt, shaped like ``caption``. Conditional and unconditional halves run in one
    batched forward pass; ``cfg_scale == 1`` runs the conditional model alone.
    """
    if cfg_scale == 1:
        def denoise(x, sigma):
            return precondition(model, x, sigma, caption, caption_mask, sigma_data=sigma_data)[0]
        return denoise

    batch, length = caption.shape[:2]
    null, null_mask = uncond if uncond is not None else null_caption(caption, caption_mask)
    both_caption = torch.cat([caption, null])                                # (2B, L, D)
    both_mask = _cat_masks(caption_mask, null_mask, batch, length)          # (2B, L) or None

    def denoise(x, sigma):
        sigma = torch.as_tensor(sigma, device=x.device).reshape(-1).expand(x.shape[0])  # (B,)
        both = precondition(model, torch.cat([x, x]), torch.cat([sigma, sigma]), both_caption, both_mask,
                            sigma_data=sigma_data)[0]                       # (2B, C, H, W)
        cond, uncond = both.chunk(2)                                        # (B, C, H, W) each
        return uncond + cfg_scale * (cond - uncond)

    return denoise


# -----------------------------------------------------------------------------
# One call: captions in, samples out

def model_device(model) -> torch.device:
    """The device of the model's first parameter (CPU for parameter-free models)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def sample(model, caption: torch.Tensor, caption_mask: torch.Tensor | None = None, *, steps: int = 30,
           cfg_scale: float = 5.0, seed: int = 0, sampler: str = "heun", latent_size=None,
           edm: EDMConfig | None = None, callback=None, device=None, noise: torch.Tensor | None = None,
           negative: torch.Tensor | None = None, negative_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Generate one sample per caption with EDM sampling and classifier-free guidance.

    Args:
        model: a MicroDiT (anything with ``model.config.in_channels`` / ``sample_size`` and the MicroDiT forward).
        caption: (B, L, D) caption token embeddings.
        caption_mask: (B, L) 1 for real tokens, or None.
        steps: number of σ levels (Heun makes 2·steps − 1 network calls).
        cfg_scale: guidance scale; 1 means no guidance.
        seed: seed of the initial noise, drawn on the CPU so a seed gives the same samples on every device.
        noise: (B, C, H, W) unit-variance initial noise to use instead of drawing it from ``seed``
            (e.g. one generator per sample, so a sample does not depend on its batch).
        sampler: one of ``SAMPLER_NAMES`` ("heun", "euler", "diffusers-euler", "diffusers-dpmpp").
        latent_size: the latent side, an int or (H, W); defaults to ``model.config.sample_size``.
        edm: EDM constants (σ_data and the σ schedule); defaults to ``EDMConfig()``.
        callback: ``callback(step, sigma, x, denoised)`` after each step.
        device: where to sample; defaults to the model's device.
        negative, negative_mask: (B, L, D) / (B, L) embeddings of negative prompts, the unconditional side of
            CFG instead of the null caption.

    Returns:
        (B, C, H, W) float32 samples (latents).

    Example::

        latents = sample(model, caption, caption_mask, steps=30, cfg_scale=5.0, seed=0)
    """
    if sampler not in SAMPLER_NAMES:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {list(SAMPLER_NAMES)}")
    edm = edm or EDMConfig()
    device = torch.device(device) if device is not None else model_device(model)
    latent_size = latent_size if latent_size is not None else model.config.sample_size
    h, w = (latent_size, latent_size) if isinstance(latent_size, int) else latent_size
    caption = caption.to(device, _param_dtype(model) or torch.float32)               # (B, L, D)
    caption_mask = caption_mask.to(device) if caption_mask is not None else None       # (B, L)
    batch = caption.shape[0]
    if negative is not None:                                                           # trimmed together below
        ones = torch.ones(caption.shape[:2], dtype=torch.bool, device=device)          # (B, L)
        caption = torch.cat([caption, negative.to(caption)])                           # (2B, L, D)
        caption_mask = torch.cat([ones if caption_mask is None else caption_mask.bool(),
                                  ones if negative_mask is None else negative_mask.to(device).bool()])  # (2B, L)
    if not getattr(model.config, "caption_mask_compat", False):                        # same samples, less work
        caption, caption_mask = trim_caption_padding(caption, caption_mask)            # (B, l, D), (B, l)
    uncond = None
    if negative is not None:
        uncond = (caption[batch:], caption_mask[batch:])
        caption, caption_mask = caption[:batch], caption_mask[:batch]
    shape = (caption.shape[0], model.config.in_channels, h, w)
    if noise is None:
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))     # (B, C, H, W)
    elif tuple(noise.shape) != shape:
        raise ValueError(f"noise must have shape {shape} (captions, channels, latent side), got {tuple(noise.shape)}")
    denoiser = cfg_denoiser(model, caption, caption_mask, cfg_scale, edm.sigma_data, uncond)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if sampler in SAMPLERS:
                sigmas = karras_sigmas(steps, edm.sigma_min, edm.sigma_max, edm.rho, device)  # (steps+1,)
                x = noise.to(device, torch.float64) * sigmas[0]                              # (B, C, H, W)
                x = SAMPLERS[sampler](denoiser, x, sigmas, callback)
            else:
                x = sample_with_diffusers(denoiser, noise.to(device) * edm.sigma_max, sampler, steps, edm, callback)
    finally:
        model.train(was_training)
    return x.to(torch.float32)
