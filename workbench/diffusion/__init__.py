"""Diffusion: EDM preconditioning and loss, EDM samplers with classifier-free guidance, diffusers adapter."""

from workbench.diffusion.edm import (
    DEFAULT_SIGMA_BIN_EDGES,
    EDMConfig,
    EDMLoss,
    LossOutput,
    loss_per_sigma_bin,
    patch_loss,
    precondition,
    sample_sigmas,
)
from workbench.diffusion.sampling import (
    SAMPLER_NAMES,
    SAMPLERS,
    cfg_denoiser,
    karras_sigmas,
    sample,
    sample_euler,
    sample_heun,
)
from workbench.diffusion.schedulers import DIFFUSERS_SCHEDULERS, make_scheduler, sample_with_diffusers

__all__ = [
    "DEFAULT_SIGMA_BIN_EDGES", "EDMConfig", "EDMLoss", "LossOutput", "loss_per_sigma_bin", "patch_loss",
    "precondition", "sample_sigmas",
    "SAMPLER_NAMES", "SAMPLERS", "cfg_denoiser", "karras_sigmas", "sample", "sample_euler", "sample_heun",
    "DIFFUSERS_SCHEDULERS", "make_scheduler", "sample_with_diffusers",
]
