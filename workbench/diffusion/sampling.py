"""Classifier-free guidance and the one-call `sample`: captions in, latents out.

`sample` builds the guided denoiser (`cfg_denoiser`), a σ schedule (`SCHEDULES`, Karras by default)
and the initial noise from a seed, then runs a registered sampler (`SAMPLERS`: the contract is in
`workbench.diffusion.samplers`)::

    latents = sample(model, caption, caption_mask, steps=30, cfg_scale=5.0, seed=0, edm=EDMConfig(sigma_data=0.5))
    latents = sample(model, caption, caption_mask, sampler="edm-stochastic", sampler_options={"s_churn": 10.0},
                     edm=EDMConfig(sigma_data=0.5))
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from workbench.diffusion.edm import EDMConfig, _param_dtype, precondition
from workbench.diffusion.samplers import DEFAULT_SAMPLER, DEFAULT_SCHEDULE, get_sampler, get_schedule
from workbench.model import null_caption, trim_caption_padding
from ..errors import InputError

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


def cfg_denoiser(model, caption: torch.Tensor, caption_mask: torch.Tensor | None = None, *, sigma_data: float,
                 cfg_scale: float = 5.0, uncond: tuple[torch.Tensor, torch.Tensor | None] | None = None):
    """A denoiser with classifier-free guidance: uncond + s·(cond − uncond).

    ``sigma_data`` (required, as for `precondition`) is the σ_data the model was trained with. The
    unconditional caption is the null caption (all zeros), or ``uncond = (states, mask)`` of a
    negative prompt, shaped like ``caption``. Conditional and unconditional halves run in one
    batched forward pass; ``cfg_scale == 1`` runs the conditional model alone::

        denoiser = cfg_denoiser(model, caption, caption_mask, sigma_data=0.5, cfg_scale=5.0)
        denoised = denoiser(x, sigma)                               # (B, C, H, W), sigma (B,)
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


def _guidance_captions(model, caption: torch.Tensor, caption_mask: torch.Tensor | None,
                       negative: torch.Tensor | None, negative_mask: torch.Tensor | None, device):
    """(caption, caption_mask, uncond) on ``device``, padding trimmed; ``uncond`` is the negative prompts or None."""
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
    if negative is None:
        return caption, caption_mask, None
    return caption[:batch], caption_mask[:batch], (caption[batch:], caption_mask[batch:])


def sample(model, caption: torch.Tensor, caption_mask: torch.Tensor | None = None, *, steps: int = 30,
           cfg_scale: float = 5.0, seed: int = 0, sampler: str = DEFAULT_SAMPLER,
           sampler_options: Mapping[str, float] | None = None, schedule: str = DEFAULT_SCHEDULE, latent_size=None,
           edm: EDMConfig | None = None, callback=None, device=None, noise: torch.Tensor | None = None,
           negative: torch.Tensor | None = None, negative_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Generate one sample per caption with EDM sampling and classifier-free guidance.

    Args:
        model: a MicroDiT (anything with ``model.config.in_channels`` / ``sample_size`` and the MicroDiT forward).
        caption: (B, L, D) caption token embeddings.
        caption_mask: (B, L) 1 for real tokens, or None.
        steps: number of σ levels (Heun makes 2·steps − 1 network calls).
        cfg_scale: guidance scale; 1 means no guidance.
        seed: seeds one CPU generator that draws the initial noise and then any noise a stochastic sampler
            adds, so a seed gives the same samples on every device.
        noise: (B, C, H, W) unit-variance initial noise to use instead of drawing it from ``seed``
            (e.g. one generator per sample, so a sample does not depend on its batch; the noise a stochastic
            sampler adds is still drawn for the whole batch from ``seed``).
        sampler: a name in ``SAMPLERS`` ("heun", "euler", "edm-stochastic", "diffusers-euler", "diffusers-dpmpp").
        sampler_options: the sampler's extra options (e.g. ``{"s_churn": 10.0}``); the rest keep their defaults.
        schedule: a name in ``SCHEDULES``, the σ levels the sampler follows (default "karras").
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
    entry, make_sigmas = get_sampler(sampler), get_schedule(schedule)
    options = entry.resolve(sampler_options)
    edm = edm or EDMConfig()
    device = torch.device(device) if device is not None else model_device(model)
    latent_size = latent_size if latent_size is not None else model.config.sample_size
    h, w = (latent_size, latent_size) if isinstance(latent_size, int) else latent_size
    caption, caption_mask, uncond = _guidance_captions(model, caption, caption_mask, negative, negative_mask, device)
    shape = (caption.shape[0], model.config.in_channels, h, w)
    generator = torch.Generator().manual_seed(seed)
    if noise is None:
        noise = torch.randn(shape, generator=generator)                                # (B, C, H, W)
    elif tuple(noise.shape) != shape:
        raise InputError(f"noise must have shape {shape} (captions, channels, latent side), got {tuple(noise.shape)}")
    denoiser = cfg_denoiser(model, caption, caption_mask, sigma_data=edm.sigma_data, cfg_scale=cfg_scale,
                            uncond=uncond)
    sigmas = make_sigmas(steps, edm, device)                                           # (steps+1,)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            x = noise.to(device, torch.float64) * sigmas[0]                            # (B, C, H, W)
            x = entry.fn(denoiser, x, sigmas, generator=generator, callback=callback, **options)
    finally:
        model.train(was_training)
    return x.to(torch.float32)
