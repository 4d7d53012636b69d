"""Specification of the adapter that lets diffusers' EDM schedulers drive our denoiser."""

from __future__ import annotations

import pytest
import torch
from diffusers import EDMDPMSolverMultistepScheduler, EDMEulerScheduler

from workbench.diffusion.edm import EDMConfig
from workbench.diffusion.samplers import karras_sigmas, sample_euler, sample_heun
from workbench.diffusion.schedulers import (
    DIFFUSERS_SCHEDULERS,
    _raw_output,
    make_scheduler,
    sample_diffusers_dpmpp,
    sample_diffusers_euler,
    sample_with_diffusers,
)

MU, S = 1.5, 0.5  # the 1-D Gaussian data set N(MU, S²)


def gaussian_denoiser(x, sigma):
    """The exact denoiser of N(MU, S²): D(x; σ) = (S²·x + σ²·MU) / (S² + σ²)."""
    sigma = sigma.view(-1, *([1] * (x.dim() - 1)))
    return (S ** 2 * x + sigma ** 2 * MU) / (S ** 2 + sigma ** 2)


def nonlinear_denoiser(x, sigma):
    """An arbitrary smooth denoiser that is not linear in x."""
    sigma = sigma.view(-1, *([1] * (x.dim() - 1)))
    return 0.9 * torch.tanh(x / (1 + sigma)) + 0.1 * torch.sin(3 * x)


@pytest.mark.parametrize("name, cls", [("diffusers-euler", EDMEulerScheduler),
                                       ("diffusers-dpmpp", EDMDPMSolverMultistepScheduler)])
def test_schedulers_are_built_with_our_edm_constants(name, cls):
    edm = EDMConfig(sigma_data=0.7, sigma_min=0.01, sigma_max=40.0, rho=5.0)
    scheduler = make_scheduler(name, edm)
    assert isinstance(scheduler, cls)
    c = scheduler.config
    assert (c.sigma_data, c.sigma_min, c.sigma_max, c.rho) == (0.7, 0.01, 40.0, 5.0)
    assert c.final_sigmas_type == "zero"


@pytest.mark.parametrize("name", sorted(DIFFUSERS_SCHEDULERS))
def test_diffusers_sigma_schedule_is_our_karras_schedule(name):
    scheduler = make_scheduler(name, EDMConfig())
    scheduler.set_timesteps(12)
    torch.testing.assert_close(scheduler.sigmas.double(), karras_sigmas(12), rtol=1e-6, atol=0)


@pytest.mark.parametrize("sigma", [80.0, 1.0, 0.002])
def test_adapter_output_is_mapped_back_to_our_denoised_by_the_scheduler(sigma):
    scheduler = make_scheduler("diffusers-dpmpp", EDMConfig())
    x = torch.randn(2, 3, 4, 4) * sigma
    denoised = torch.randn(2, 3, 4, 4)
    model_output = _raw_output(x, denoised, sigma, scheduler.config.sigma_data)
    torch.testing.assert_close(scheduler.precondition_outputs(x, model_output, sigma), denoised)


@pytest.mark.parametrize("denoiser", [gaussian_denoiser, nonlinear_denoiser])
@pytest.mark.parametrize("steps", [5, 30])
def test_our_euler_matches_diffusers_edm_euler(denoiser, steps):
    noise = torch.randn(4, 2, 8, 8, generator=torch.Generator().manual_seed(steps))
    ours = sample_euler(denoiser, noise.double() * 80.0, karras_sigmas(steps)).float()
    theirs = sample_diffusers_euler(denoiser, noise * 80.0, karras_sigmas(steps))
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)


def test_dpmpp_recovers_gaussian_mean_and_std():
    half = torch.randn(10000, 1, generator=torch.Generator().manual_seed(0))
    noise = torch.cat([half, -half])
    noise = noise / noise.std()          # mean 0, std 1 exactly: only the sampler's error remains
    x = sample_diffusers_dpmpp(gaussian_denoiser, noise * 80.0, karras_sigmas(30))
    assert x.mean().item() == pytest.approx(MU, rel=0.03)
    assert x.std().item() == pytest.approx(S, rel=0.03)


def test_dpmpp_agrees_with_heun_on_a_nonlinear_denoiser():
    noise = torch.randn(4, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    heun = sample_heun(nonlinear_denoiser, noise.double() * 80.0, karras_sigmas(40)).float()
    dpm = sample_diffusers_dpmpp(nonlinear_denoiser, noise * 80.0, karras_sigmas(40))
    torch.testing.assert_close(dpm, heun, rtol=0, atol=0.02)


def test_diffusers_callback_sees_each_step():
    events = []
    sample_diffusers_dpmpp(gaussian_denoiser, torch.randn(3, 1) * 80.0, karras_sigmas(4),
                           callback=lambda i, sigma, x, denoised: events.append((i, sigma, denoised.shape)))
    assert [e[0] for e in events] == [0, 1, 2, 3]
    assert [e[1] for e in events] == pytest.approx(karras_sigmas(4)[:-1].tolist(), rel=1e-6)
    assert events[0][2] == (3, 1)


@pytest.mark.parametrize("name", sorted(DIFFUSERS_SCHEDULERS))
def test_diffusers_schedulers_follow_the_schedule_they_are_given(name):
    sigmas = karras_sigmas(6, sigma_min=0.05, sigma_max=20.0, rho=3.0)
    seen = []
    sample_with_diffusers(gaussian_denoiser, torch.randn(3, 1) * 20.0, sigmas, name,
                          callback=lambda i, sigma, x, denoised: seen.append(sigma))
    assert seen == pytest.approx(sigmas[:-1].tolist(), rel=1e-6)


def test_diffusers_sampling_matches_the_scheduler_on_its_own_schedule():
    """Following our schedule is what the scheduler does with its own Karras schedule (same σ within float32)."""
    noise = torch.randn(4, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    ours = sample_diffusers_dpmpp(nonlinear_denoiser, noise * 80.0, karras_sigmas(12))
    scheduler = make_scheduler("diffusers-dpmpp", EDMConfig())
    scheduler.set_timesteps(12)
    scheduler.set_begin_index(0)
    x = noise * 80.0
    for i, t in enumerate(scheduler.timesteps):
        sigma = scheduler.sigmas[i].item()
        denoised = nonlinear_denoiser(x, torch.full((4,), sigma))
        x = scheduler.step(_raw_output(x, denoised, sigma, scheduler.config.sigma_data), t, x).prev_sample
    torch.testing.assert_close(ours, x, rtol=0, atol=1e-5)


def test_unknown_scheduler_lists_the_choices():
    with pytest.raises(ValueError, match="diffusers-euler"):
        make_scheduler("diffusers-ddim")
