"""Specification of classifier-free guidance and the one-call `sample`."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from workbench.diffusion.edm import EDMConfig, EDMLoss, precondition
from workbench.diffusion.samplers import SAMPLERS, karras_sigmas, sample_edm_stochastic, sample_heun
from workbench.diffusion.sampling import cfg_denoiser, sample

SD = 0.9  # σ_data passed wherever it is required


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
# Classifier-free guidance

def test_cfg_denoiser_has_no_sigma_data_default():
    param = inspect.signature(cfg_denoiser).parameters["sigma_data"]
    assert param.default is inspect.Parameter.empty and param.kind is inspect.Parameter.KEYWORD_ONLY


def test_cfg_denoiser_uses_the_sigma_data_it_is_given():
    model, caption = CaptionNet(), captions()
    x, sigma = torch.randn(2, 2, 4, 4), torch.tensor([2.0, 0.5])
    for sd in (0.5, 0.9):
        guided = cfg_denoiser(model, caption, sigma_data=sd, cfg_scale=1.0)(x, sigma)
        torch.testing.assert_close(guided, precondition(model, x, sigma, caption, sigma_data=sd)[0])


def test_cfg_scale_one_is_the_conditional_model_alone():
    model, caption, mask = CaptionNet(), captions(), torch.tensor([[1, 1, 0], [1, 0, 0]])
    x, sigma = torch.randn(2, 2, 4, 4), torch.tensor([2.0, 0.5])
    guided = cfg_denoiser(model, caption, mask, sigma_data=SD, cfg_scale=1.0)(x, sigma)
    assert len(model.calls) == 1 and model.calls[0].caption.shape[0] == 2
    conditional, _ = precondition(model, x, sigma, caption, mask, sigma_data=SD)
    torch.testing.assert_close(guided, conditional)


def test_cfg_runs_cond_and_zero_caption_uncond_in_one_batched_forward():
    model, caption, mask = CaptionNet(), captions(), torch.tensor([[1, 1, 0], [1, 0, 0]])
    x, sigma = torch.randn(2, 2, 4, 4), torch.tensor([2.0, 0.5])
    guided = cfg_denoiser(model, caption, mask, sigma_data=SD, cfg_scale=4.0)(x, sigma)

    assert len(model.calls) == 1
    call = model.calls[0]
    torch.testing.assert_close(call.caption, torch.cat([caption, torch.zeros_like(caption)]))
    torch.testing.assert_close(call.caption_mask, torch.cat([mask, torch.ones_like(mask)]))
    cond, _ = precondition(model, x, sigma, caption, mask, sigma_data=SD)
    uncond, _ = precondition(model, x, sigma, torch.zeros_like(caption), torch.ones_like(mask), sigma_data=SD)
    torch.testing.assert_close(guided, uncond + 4.0 * (cond - uncond))


def test_cfg_without_caption_mask_passes_no_mask():
    model = CaptionNet()
    cfg_denoiser(model, captions(), None, sigma_data=SD, cfg_scale=3.0)(torch.randn(2, 2, 4, 4), torch.tensor(1.0))
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
    conditional = sample_heun(lambda x, s: precondition(model, x, s, caption, sigma_data=SD)[0], noise.double() * 80,
                              sigmas)
    torch.testing.assert_close(guided, conditional.float())


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_name_produces_finite_samples(sampler):
    out = sample(CaptionNet(), captions(), steps=4, sampler=sampler, latent_size=4)
    assert out.shape == (2, 2, 4, 4) and torch.isfinite(out).all()


def test_sample_runs_in_eval_mode_and_restores_training_mode():
    model = CaptionNet().train()
    modes = []
    sample(model, captions(), steps=2, callback=lambda *args: modes.append(model.training))
    assert modes == [False, False] and model.training


def test_unknown_sampler_lists_the_choices():
    with pytest.raises(ValueError, match="choose one of.*heun.*edm-stochastic.*diffusers-dpmpp"):
        sample(CaptionNet(), captions(), sampler="ddim")


def test_sample_uses_the_edm_sigma_schedule_of_the_config():
    seen = []
    edm = EDMConfig(sigma_max=10.0, sigma_min=0.01)
    sample(CaptionNet(), captions(), steps=3, edm=edm, callback=lambda i, sigma, x, d: seen.append(sigma))
    assert seen == pytest.approx(karras_sigmas(3, 0.01, 10.0)[:-1].tolist())


def test_edm_stochastic_sample_is_reproducible_from_the_seed_and_is_heun_without_churn():
    model, caption = CaptionNet(), captions()
    a = sample(model, caption, steps=4, seed=1, sampler="edm-stochastic", sampler_options={"s_tmin": 0.0})
    b = sample(model, caption, steps=4, seed=1, sampler="edm-stochastic", sampler_options={"s_tmin": 0.0})
    c = sample(model, caption, steps=4, seed=2, sampler="edm-stochastic", sampler_options={"s_tmin": 0.0})
    assert torch.equal(a, b) and not torch.allclose(a, c)
    heun = sample(model, caption, steps=4, seed=1)
    assert not torch.allclose(a, heun)
    assert torch.equal(sample(model, caption, steps=4, seed=1, sampler="edm-stochastic",
                              sampler_options={"s_churn": 0.0}), heun)


def test_the_seed_draws_the_noise_the_stochastic_sampler_adds_after_the_initial_noise():
    model, caption = CaptionNet(), captions()
    generator = torch.Generator().manual_seed(3)
    noise = torch.randn(2, 2, 8, 8, generator=generator)
    sigmas = karras_sigmas(3)
    expected = sample_edm_stochastic(cfg_denoiser(model, caption, sigma_data=SD, cfg_scale=2.0),
                                     noise.double() * sigmas[0], sigmas, generator=generator, s_tmin=0.0)
    got = sample(model, caption, steps=3, cfg_scale=2.0, seed=3, sampler="edm-stochastic",
                 sampler_options={"s_tmin": 0.0}, edm=EDMConfig(sigma_data=SD))
    torch.testing.assert_close(got, expected.float())


def test_sample_follows_the_karras_schedule_by_default_and_refuses_unknown_names():
    seen = []
    sample(CaptionNet(), captions(), steps=3, schedule="karras", callback=lambda i, sigma, x, d: seen.append(sigma))
    assert seen == pytest.approx(karras_sigmas(3)[:-1].tolist())
    with pytest.raises(ValueError, match=r"unknown schedule 'cosine'; choose one of \['karras'\]"):
        sample(CaptionNet(), captions(), schedule="cosine")
    with pytest.raises(ValueError, match="'euler' has no option 's_churn'"):
        sample(CaptionNet(), captions(), sampler="euler", sampler_options={"s_churn": 1.0})


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
        conditional = sample_heun(lambda x, s: precondition(nano_model, x, s, caption, mask, sigma_data=SD)[0],
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
