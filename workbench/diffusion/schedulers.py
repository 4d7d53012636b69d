"""Adapter that lets diffusers' EDM schedulers drive our denoiser D(x; σ).

diffusers' EDM schedulers expect the *raw* network output F and rebuild the denoised sample
themselves with ``precondition_outputs``: D = c_skip·x + c_out·F (``prediction_type="epsilon"``
is EDM's F-prediction, despite its name; ``"sample"`` is not implemented by their
``precondition_outputs``). Our denoiser already returns D, so the adapter hands the scheduler

    F = (D − c_skip·x) / c_out

computed with the same σ_data the scheduler is built with, which its ``precondition_outputs``
maps back to exactly D. Schedulers are built with our σ_data / σ_min / σ_max / ρ (diffusers'
default σ_data is 0.5, ours 0.9) and a final σ of 0, so their σ schedule is our `karras_sigmas`
(in float32)::

    x = torch.randn(4, 4, 32, 32) * edm.sigma_max
    images = sample_with_diffusers(denoiser, x, "diffusers-dpmpp", steps=30, edm_config=edm)
"""

from __future__ import annotations

import torch
from diffusers import EDMDPMSolverMultistepScheduler, EDMEulerScheduler

from workbench.diffusion.edm import EDMConfig, preconditioning

# Sampler name -> diffusers scheduler class.
DIFFUSERS_SCHEDULERS = {
    "diffusers-euler": EDMEulerScheduler,
    "diffusers-dpmpp": EDMDPMSolverMultistepScheduler,  # DPM-Solver++(2M)
}


def make_scheduler(name: str, edm_config: EDMConfig | None = None):
    """A diffusers EDM scheduler configured with our EDM constants (final σ = 0, F-prediction)."""
    if name not in DIFFUSERS_SCHEDULERS:
        raise ValueError(f"unknown diffusers scheduler {name!r}; choose one of {list(DIFFUSERS_SCHEDULERS)}")
    cfg = edm_config or EDMConfig()
    return DIFFUSERS_SCHEDULERS[name](
        sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max, sigma_data=cfg.sigma_data, rho=cfg.rho,
        sigma_schedule="karras", prediction_type="epsilon", final_sigmas_type="zero",
    )


def _raw_output(x: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_data: float) -> torch.Tensor:
    """The F for which c_skip·x + c_out·F == denoised (the inverse of the scheduler's precondition_outputs)."""
    c_skip, c_out, _ = preconditioning(sigma, sigma_data)
    return (denoised - c_skip * x) / c_out


@torch.no_grad()
def sample_with_diffusers(denoiser, x: torch.Tensor, scheduler_name: str, steps: int,
                          edm_config: EDMConfig | None = None, callback=None) -> torch.Tensor:
    """Sample with a diffusers EDM scheduler driving ``denoiser(x, sigma)``.

    Args:
        denoiser: ``denoiser(x, sigma) -> denoised``, sigma of shape (B,).
        x: (B, C, H, W) initial noise already multiplied by σ_max (as for our samplers; diffusers'
            ``init_noise_sigma`` = √(σ_max² + 1) is not used).
        scheduler_name: a key of ``DIFFUSERS_SCHEDULERS``.
        steps: number of σ levels, as in ``karras_sigmas(steps)``.
        edm_config: EDM constants; defaults to ``EDMConfig()``.
        callback: ``callback(step, sigma, x, denoised)`` after each step.

    Returns:
        (B, C, H, W) float32 samples.
    """
    scheduler = make_scheduler(scheduler_name, edm_config)
    sigma_data = scheduler.config.sigma_data
    scheduler.set_timesteps(steps)
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
