"""Diffusion: EDM preconditioning and loss, the sampler registry (EDM Heun / Euler / stochastic, diffusers
schedulers), classifier-free guidance and the one-call `sample`."""

from workbench.diffusion.edm import (
    DEFAULT_SIGMA_BIN_EDGES,
    EDMConfig,
    EDMLoss,
    LossOutput,
    draw_training_sigmas,
    edm_scalings,
    loss_per_sigma_bin,
    sigma_bin_means,
    sigma_bin_sums,
    patch_loss,
    precondition,
)
from workbench.diffusion.samplers import (
    DEFAULT_SAMPLER,
    DEFAULT_SCHEDULE,
    SAMPLERS,
    SCHEDULES,
    SamplerEntry,
    SamplerOption,
    denoise_at,
    get_sampler,
    get_schedule,
    karras_schedule,
    karras_sigmas,
    ode_derivative,
    register_sampler,
    sample_edm_stochastic,
    sample_euler,
    sample_heun,
)
from workbench.diffusion.sampling import cfg_denoiser, sample
from workbench.diffusion.schedulers import (  # registers the diffusers samplers
    DIFFUSERS_SCHEDULERS,
    make_scheduler,
    sample_diffusers_dpmpp,
    sample_diffusers_euler,
    sample_with_diffusers,
)

__all__ = [
    "DEFAULT_SIGMA_BIN_EDGES", "EDMConfig", "EDMLoss", "LossOutput", "draw_training_sigmas", "edm_scalings",
    "loss_per_sigma_bin", "sigma_bin_means", "sigma_bin_sums", "patch_loss", "precondition",
    "DEFAULT_SAMPLER", "DEFAULT_SCHEDULE", "SAMPLERS", "SCHEDULES", "SamplerEntry", "SamplerOption", "denoise_at",
    "get_sampler", "get_schedule", "karras_schedule", "karras_sigmas", "ode_derivative", "register_sampler",
    "sample_edm_stochastic", "sample_euler", "sample_heun",
    "DIFFUSERS_SCHEDULERS", "make_scheduler", "sample_diffusers_dpmpp", "sample_diffusers_euler",
    "sample_with_diffusers",
    "cfg_denoiser", "sample",
]
