"""Adapter that lets diffusers' EDM schedulers drive our denoiser D(x; σ), registered as samplers.

diffusers' EDM schedulers expect the *raw* network output F and rebuild the denoised sample
themselves with ``precondition_outputs``: D = c_skip·x + c_out·F (``prediction_type="epsilon"``
is EDM's F-prediction, despite its name; ``"sample"`` is not implemented by their
``precondition_outputs``). Our denoiser already returns D, so the adapter hands the scheduler

    F = (D − c_skip·x) / c_out

computed with the same σ_data the scheduler is built with, which its ``precondition_outputs``
maps back to D (up to float32 rounding, whatever that σ_data is). The scheduler follows the σ
schedule it is given (in float32, final σ 0), like every sampler of `workbench.diffusion.samplers`::

    sigmas = karras_sigmas(30)
    images = sample_diffusers_dpmpp(denoiser, torch.randn(4, 4, 32, 32) * sigmas[0], sigmas)

``make_scheduler`` builds one with an `EDMConfig`'s constants, for a ``MicroDiTPipeline``.
"""

from __future__ import annotations

import torch
from diffusers import EDMDPMSolverMultistepScheduler, EDMEulerScheduler

from workbench.diffusion.edm import EDMConfig, edm_scalings
from workbench.diffusion.samplers import register_sampler
from ..errors import InputError

# Sampler name -> diffusers scheduler class.
DIFFUSERS_SCHEDULERS = {
    "diffusers-euler": EDMEulerScheduler,
    "diffusers-dpmpp": EDMDPMSolverMultistepScheduler,  # DPM-Solver++(2M)
}


def make_scheduler(name: str, edm_config: EDMConfig | None = None):
    """A diffusers EDM scheduler configured with our EDM constants (final σ = 0, F-prediction)."""
    if name not in DIFFUSERS_SCHEDULERS:
        raise InputError(f"unknown diffusers scheduler {name!r}; choose one of {list(DIFFUSERS_SCHEDULERS)}")
    cfg = edm_config or EDMConfig()
    return DIFFUSERS_SCHEDULERS[name](
        sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max, sigma_data=cfg.sigma_data, rho=cfg.rho,
        sigma_schedule="karras", prediction_type="epsilon", final_sigmas_type="zero",
    )


def _raw_output(x: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_data: float) -> torch.Tensor:
    """The F for which c_skip·x + c_out·F == denoised (the inverse of the scheduler's precondition_outputs)."""
    c_skip, c_out, _ = edm_scalings(sigma, sigma_data)
    return (denoised - c_skip * x) / c_out


@torch.no_grad()
def sample_with_diffusers(denoiser, x: torch.Tensor, sigmas: torch.Tensor, scheduler_name: str, *,
                          callback=None) -> torch.Tensor:
    """Sample with a diffusers EDM scheduler driving ``denoiser(x, sigma)`` along the schedule ``sigmas``.

    Args:
        denoiser: ``denoiser(x, sigma) -> denoised``, sigma of shape (B,).
        x: (B, C, H, W) initial noise already multiplied by ``sigmas[0]`` (as for our samplers; diffusers'
            ``init_noise_sigma`` = √(σ_max² + 1) is not used).
        sigmas: (steps+1,) the σ schedule, ending with 0 (e.g. ``karras_sigmas(steps)``).
        scheduler_name: a key of ``DIFFUSERS_SCHEDULERS``.
        callback: ``callback(step, sigma, x, denoised)`` after each step.

    Returns:
        (B, C, H, W) float32 samples.
    """
    sigmas = sigmas.to("cpu", torch.float32)                  # (steps+1,) as diffusers keeps them
    scheduler = make_scheduler(scheduler_name)                # its σ constants are replaced by `sigmas` below
    sigma_data = scheduler.config.sigma_data
    scheduler.set_timesteps(len(sigmas) - 1)                  # resets the solver's state ...
    scheduler.sigmas = sigmas                                 # ... then follow our schedule
    scheduler.timesteps = scheduler.precondition_noise(sigmas[:-1])
    scheduler.set_begin_index(0)                              # step i uses scheduler.sigmas[i]
    x = x.to(torch.float32)
    for i, t in enumerate(scheduler.timesteps):
        sigma = scheduler.sigmas[i].item()
        scheduler.scale_model_input(x, t)                     # only bookkeeping: our denoiser scales its own input
        s = torch.full((x.shape[0],), sigma, dtype=torch.float32, device=x.device)  # (B,)
        denoised = denoiser(x, s).to(torch.float32)           # (B, C, H, W)
        model_output = _raw_output(x, denoised, sigma, sigma_data)
        x = scheduler.step(model_output, t, x).prev_sample.to(torch.float32)
        if callback is not None:
            callback(i, sigma, x, denoised)
    return x


@register_sampler("diffusers-euler", "diffusers' EDMEulerScheduler driving our denoiser (Karras et al. 2022, Eq. 1)",
                  pipeline_scheduler="EDMEulerScheduler")
def sample_diffusers_euler(denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, generator=None,
                           callback=None) -> torch.Tensor:
    """diffusers' ``EDMEulerScheduler`` (Euler on the probability-flow ODE) along ``sigmas``; float32 samples."""
    return sample_with_diffusers(denoiser, x, sigmas, "diffusers-euler", callback=callback)


@register_sampler("diffusers-dpmpp", "diffusers' EDMDPMSolverMultistepScheduler, DPM-Solver++(2M), driving our "
                                     "denoiser", pipeline_scheduler="EDMDPMSolverMultistepScheduler")
def sample_diffusers_dpmpp(denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, generator=None,
                           callback=None) -> torch.Tensor:
    """diffusers' ``EDMDPMSolverMultistepScheduler`` (DPM-Solver++(2M)) along ``sigmas``; float32 samples."""
    return sample_with_diffusers(denoiser, x, sigmas, "diffusers-dpmpp", callback=callback)
