"""Specification of the EDM samplers, classifier-free guidance and the one-call `sample`."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from workbench.diffusion.edm import EDMConfig, EDMLoss, precondition
from workbench.diffusion.sampling import (
    SAMPLER_NAMES,
    SAMPLERS,
    cfg_denoiser,
    karras_sigmas,
    sample,
    sample_euler,
    sample_heun,
)

MU, S = 1.5, 0.5  # the 1-D Gaussian data set N(MU, S²)


def gaussian_denoiser(mu=MU, s=S):
    """The exact denoiser E[x0 | x] of the data set N(mu, s²): D(x; σ) = (s²·x + σ²·mu) / (s² + σ²)."""
    def denoise(x, sigma):
        sigma = sigma.view(-1, *([1] * (x.dim() - 1)))
        return (s ** 2 * x + sigma ** 2 * mu) / (s ** 2 + sigma ** 2)
    return denoise


def exact_flow(noise, sigma_max=80.0, mu=MU, s=S):
    """Where the probability-flow ODE of N(mu, s²) takes x(σ_max) = σ_max·noise at σ = 0."""
    return mu + (sigma_max * noise - mu) * s / (s ** 2 + sigma_max ** 2) ** 0.5


def standard_noise(n, seed=0):
    """n antithetic standard-normal draws rescaled to mean 0 and std 1 exactly (removes sampling error)."""
    half = torch.randn(n // 2, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    noise = torch.cat([half, -half])
    return noise / noise.std()


@dataclass
class Out:
    """Stand-in for MicroDiTOutput."""

    sample: torch.Tensor
    keep: torch.Tensor | None = None


class CaptionNet(nn.Module):
    """A stand-in MicroDiT whose output depends on the caption; it records each forward's batch."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(in_channels=2, sample_size=8, patch_size=2, caption_dim=4)
        self.scale = nn.Parameter(torch.tensor(0.5))
        self.calls = []

    def forward(self, x, c_noise, caption, caption_mask=None, mask_ratio=0.0):
        self.calls.append(SimpleNamespace(caption=caption.clone(), caption_mask=caption_mask))
        shift = caption.mean(dim=(1, 2)).view(-1, 1, 1, 1)                  # (B, 1, 1, 1)
        return Out(self.scale * torch.tanh(x) + shift + 0.1 * c_noise.view(-1, 1, 1, 1))


def captions(batch=2, length=3, dim=4, seed=0):
    """Random (B, L, D) caption embeddings for CaptionNet."""
    return torch.randn(batch, length, dim, generator=torch.Generator().manual_seed(seed))


# -----------------------------------------------------------------------------
# Schedule

def test_karras_sigmas_run_from_sigma_max_to_sigma_min_then_zero():
    sigmas = karras_sigmas(10, sigma_min=0.002, sigma_max=80.0, rho=7.0)
    assert sigmas.shape == (11,) and sigmas.dtype == torch.float64
    assert sigmas[0].item() == pytest.approx(80.0) and sigmas[-2].item() == pytest.approx(0.002)
    assert sigmas[-1].item() == 0.0
    assert (sigmas[1:] < sigmas[:-1]).all()


def test_karras_sigmas_rejects_zero_steps():
    with pytest.raises(ValueError, match="steps"):
        karras_sigmas(0)


# -----------------------------------------------------------------------------
# Samplers

def test_samplers_share_one_signature():
    signatures = {str(inspect.signature(fn)) for fn in SAMPLERS.values()}
    assert signatures == {"(denoiser, x: 'torch.Tensor', sigmas: 'torch.Tensor', callback=None) -> 'torch.Tensor'"}


def test_heun_recovers_gaussian_mean_and_std():
    noise = standard_noise(20000)
    x = sample_heun(gaussian_denoiser(), noise * 80.0, karras_sigmas(40))
    assert x.mean().item() == pytest.approx(MU, rel=0.02)
    assert x.std().item() == pytest.approx(S, rel=0.02)


def test_heun_converges_at_second_order_and_euler_at_first():
    noise = standard_noise(200)
    exact = exact_flow(noise)

    def error(sampler, steps):
        return (sampler(gaussian_denoiser(), noise * 80.0, karras_sigmas(steps)) - exact).abs().max().item()

    assert error(sample_heun, 20) / error(sample_heun, 40) > 3.0      # ~4 for a 2nd-order method
    assert 1.5 < error(sample_euler, 20) / error(sample_euler, 40) < 2.5
    assert error(sample_heun, 20) < error(sample_euler, 20) / 2


def test_heun_takes_an_euler_step_to_sigma_zero():
    seen = []

    def denoiser(x, sigma):
        seen.append(sigma[0].item())
        return gaussian_denoiser()(x, sigma)

    sample_heun(denoiser, torch.randn(4, 1, dtype=torch.float64) * 80, karras_sigmas(5))
    assert len(seen) == 2 * 5 - 1
    assert min(seen) > 0


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_callback_runs_after_each_step_with_the_denoised_estimate(name):
    events = []
    sigmas = karras_sigmas(4)
    x = SAMPLERS[name](gaussian_denoiser(), torch.randn(3, 1, dtype=torch.float64) * 80, sigmas,
                       callback=lambda i, sigma, x, denoised: events.append((i, sigma, x.clone(), denoised)))
    assert [e[0] for e in events] == [0, 1, 2, 3]
    assert [e[1] for e in events] == pytest.approx(sigmas[:-1].tolist())
    assert torch.equal(events[-1][2], x)
    assert events[0][3].shape == (3, 1)


def test_denoiser_is_called_in_float32_and_the_result_keeps_the_input_dtype():
    dtypes = []

    def denoiser(x, sigma):
        dtypes.append((x.dtype, sigma.dtype, sigma.shape))
        return x * 0

    x = sample_heun(denoiser, torch.randn(3, 2, dtype=torch.float64), karras_sigmas(2))
    assert x.dtype == torch.float64
    assert set(dtypes) == {(torch.float32, torch.float32, (3,))}


# -----------------------------------------------------------------------------
# Classifier-free guidance

def test_cfg_scale_one_is_the_conditional_model_alone():
    model, caption, mask = CaptionNet(), captions(), torch.tensor([[1, 1, 0], [1, 0, 0]])
    x, sigma = torch.randn(2, 2, 4, 4), torch.tensor([2.0, 0.5])
    guided = cfg_denoiser(model, caption, mask, cfg_scale=1.0)(x, sigma)
    assert len(model.calls) == 1 and model.calls[0].caption.shape[0] == 2
    conditional, _ = precondition(model, x, sigma, caption, mask)
    torch.testing.assert_close(guided, conditional)


def test_cfg_runs_cond_and_zero_caption_uncond_in_one_batched_forward():
    model, caption, mask = CaptionNet(), captions(), torch.tensor([[1, 1, 0], [1, 0, 0]])
    x, sigma = torch.randn(2, 2, 4, 4), torch.tensor([2.0, 0.5])
    guided = cfg_denoiser(model, caption, mask, cfg_scale=4.0)(x, sigma)

    assert len(model.calls) == 1
    call = model.calls[0]
    torch.testing.assert_close(call.caption, torch.cat([caption, torch.zeros_like(caption)]))
    torch.testing.assert_close(call.caption_mask, torch.cat([mask, torch.ones_like(mask)]))
    cond, _ = precondition(model, x, sigma, caption, mask)
    uncond, _ = precondition(model, x, sigma, torch.zeros_like(caption), torch.ones_like(mask))
    torch.testing.assert_close(guided, uncond + 4.0 * (cond - uncond))


def test_cfg_without_caption_mask_passes_no_mask():
    model = CaptionNet()
    cfg_denoiser(model, captions(), None, cfg_scale=3.0)(torch.randn(2, 2, 4, 4), torch.tensor(1.0))
    assert model.calls[0].caption_mask is None


# -----------------------------------------------------------------------------
# sample(): captions in, latents out

def test_same_seed_gives_identical_samples_and_another_seed_does_not():
    model, caption = CaptionNet(), captions()
    a = sample(model, caption, steps=3, seed=1)
    b = sample(model, caption, steps=3, seed=1)
    c = sample(model, caption, steps=3, seed=2)
    assert a.shape == (2, 2, 8, 8) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_sample_with_cfg_scale_one_equals_sampling_the_conditional_model():
    model, caption = CaptionNet(), captions()
    guided = sample(model, caption, steps=3, cfg_scale=1.0, seed=0, latent_size=(4, 6))
    noise = torch.randn(2, 2, 4, 6, generator=torch.Generator().manual_seed(0))
    sigmas = karras_sigmas(3)
    conditional = sample_heun(lambda x, s: precondition(model, x, s, caption)[0], noise.double() * 80, sigmas)
    torch.testing.assert_close(guided, conditional.float())


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_every_sampler_name_produces_finite_samples(sampler):
    out = sample(CaptionNet(), captions(), steps=4, sampler=sampler, latent_size=4)
    assert out.shape == (2, 2, 4, 4) and torch.isfinite(out).all()


def test_sample_runs_in_eval_mode_and_restores_training_mode():
    model = CaptionNet().train()
    modes = []
    sample(model, captions(), steps=2, callback=lambda *args: modes.append(model.training))
    assert modes == [False, False] and model.training


def test_unknown_sampler_lists_the_choices():
    with pytest.raises(ValueError, match="choose one of.*heun.*diffusers-dpmpp"):
        sample(CaptionNet(), captions(), sampler="ddim")


def test_sample_uses_the_edm_sigma_schedule_of_the_config():
    seen = []
    edm = EDMConfig(sigma_max=10.0, sigma_min=0.01)
    sample(CaptionNet(), captions(), steps=3, edm=edm, callback=lambda i, sigma, x, d: seen.append(sigma))
    assert seen == pytest.approx(karras_sigmas(3, 0.01, 10.0)[:-1].tolist())


# -----------------------------------------------------------------------------
# With the real MicroDiT ("nano" preset, randomised so that its output is not zero)

@pytest.fixture(scope="module")
def nano_model():
    """One randomised nano MicroDiT shared by this module's tests (building one costs seconds on CPU)."""
    from workbench.model import MicroDiT

    torch.manual_seed(0)
    model = MicroDiT.from_preset("nano")
    with torch.no_grad():
        for p in model.parameters():       # the final layer is zero-initialised: perturb every weight
            p.add_(0.05 * torch.randn_like(p))
    return model


def nano_caption(model, batch=2, length=5):
    """A (caption, mask) batch for ``model``; the second caption has two padding tokens."""
    caption = torch.randn(batch, length, model.config.caption_dim, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, 3:] = 0
    return caption, mask


def test_microdit_cfg_scale_one_equals_the_conditional_sample(nano_model):
    caption, mask = nano_caption(nano_model)
    guided = sample(nano_model, caption, mask, steps=2, cfg_scale=1.0, seed=0, latent_size=8)
    noise = torch.randn(2, nano_model.config.in_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        conditional = sample_heun(lambda x, s: precondition(nano_model, x, s, caption, mask)[0],
                                  noise.double() * 80, karras_sigmas(2))
    torch.testing.assert_close(guided, conditional.float())
    guided_5 = sample(nano_model, caption, mask, steps=2, cfg_scale=5.0, seed=0, latent_size=8)
    assert not torch.allclose(guided, guided_5)  # the caption matters, so guidance changes the sample


def test_microdit_same_seed_gives_identical_samples(nano_model):
    caption, mask = nano_caption(nano_model)
    a = sample(nano_model, caption, mask, steps=2, seed=3, latent_size=8)
    b = sample(nano_model, caption, mask, steps=2, seed=3, latent_size=8)
    assert a.shape == (2, nano_model.config.in_channels, 8, 8)
    assert torch.equal(a, b)


def test_microdit_masked_edm_loss_runs_and_backpropagates(nano_model):
    caption, mask = nano_caption(nano_model)
    x0 = torch.randn(2, nano_model.config.in_channels, 8, 8)
    out = EDMLoss()(nano_model, x0, caption, mask, mask_ratio=0.75, generator=torch.Generator().manual_seed(0))
    assert out.per_sample.shape == (2,) and torch.isfinite(out.loss)
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in nano_model.parameters())
    nano_model.zero_grad(set_to_none=True)
