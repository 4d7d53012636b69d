"""Specification of EDM preconditioning, training noise and the (masked) EDM loss."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from workbench.diffusion.edm import (EDMConfig, EDMLoss, draw_training_sigmas, edm_scalings, loss_per_sigma_bin,
                                     patch_loss, precondition)

SD = 0.9  # σ_data of the paper


@dataclass
class Out:
    """Stand-in for MicroDiTOutput."""

    sample: torch.Tensor
    keep: torch.Tensor | None = None


def coefficients(sigma, sd=SD):
    """Hand-written EDM coefficients (Karras et al. 2022, Table 1)."""
    c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
    c_out = sigma * sd / (sigma ** 2 + sd ** 2) ** 0.5
    c_in = 1 / (sigma ** 2 + sd ** 2) ** 0.5
    return c_skip, c_out, c_in


class Recorder(nn.Module):
    """Stand-in F = sin(3·x_in) + c_noise that records what it was called with."""

    def forward(self, x, c_noise, caption, caption_mask=None, mask_ratio=0.0, generator=None):
        self.seen = dict(x=x, c_noise=c_noise, caption=caption, caption_mask=caption_mask, mask_ratio=mask_ratio)
        return Out(torch.sin(3 * x) + c_noise.view(-1, 1, 1, 1))


class Oracle(nn.Module):
    """Stand-in F chosen so that D(x; σ) == x0 + error exactly; reports ``keep`` when masking."""

    def __init__(self, x0, error, keep=None):
        super().__init__()
        self.x0, self.error, self.keep = x0, error, keep

    def forward(self, x_in, c_noise, caption, caption_mask=None, mask_ratio=0.0, generator=None):
        sigma = (4 * c_noise).exp().view(-1, 1, 1, 1)
        c_skip, c_out, c_in = coefficients(sigma)
        x = x_in / c_in
        f = (self.x0 + self.error - c_skip * x) / c_out
        return Out(f, self.keep if mask_ratio > 0 else None)


def caption_for(batch):
    return torch.zeros(batch, 3, 4, dtype=torch.float64)


# -----------------------------------------------------------------------------
# EDMConfig

def test_config_defaults_are_the_papers():
    cfg = EDMConfig()
    assert (cfg.sigma_data, cfg.sigma_min, cfg.sigma_max, cfg.rho) == (0.9, 0.002, 80.0, 7.0)
    assert (cfg.p_mean, cfg.p_std) == (-0.6, 1.2)


@pytest.mark.parametrize("field, value", [
    ("sigma_data", 0.0), ("sigma_min", -1.0), ("sigma_max", 0.0), ("rho", 0.0), ("p_std", -0.5),
])
def test_config_validation_names_the_field_and_value(field, value):
    with pytest.raises(ValueError, match=rf"EDMConfig.{field}: expected a positive number, got {value}"):
        EDMConfig(**{field: value})


def test_config_rejects_sigma_min_not_below_sigma_max():
    with pytest.raises(ValueError, match=r"EDMConfig.sigma_min: expected < sigma_max \(1.0\), got 2.0"):
        EDMConfig(sigma_min=2.0, sigma_max=1.0)


# -----------------------------------------------------------------------------
# Preconditioning

def test_precondition_feeds_network_scaled_input_and_log_sigma_over_4():
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.01, 1.0, 50.0], dtype=torch.float64)
    caption, mask = caption_for(3), torch.ones(3, 3, dtype=torch.long)
    net = Recorder()
    denoised, keep = precondition(net, x, sigma, caption, mask, mask_ratio=0.5, sigma_data=SD)

    s = sigma.view(-1, 1, 1, 1)
    c_skip, c_out, c_in = coefficients(s)
    torch.testing.assert_close(net.seen["x"], c_in * x)
    torch.testing.assert_close(net.seen["c_noise"], sigma.log() / 4)
    assert net.seen["caption"] is caption and net.seen["caption_mask"] is mask and net.seen["mask_ratio"] == 0.5
    expected = c_skip * x + c_out * (torch.sin(3 * c_in * x) + (sigma.log() / 4).view(-1, 1, 1, 1))
    torch.testing.assert_close(denoised, expected)
    assert keep is None


def test_precondition_has_no_sigma_data_default():
    param = inspect.signature(precondition).parameters["sigma_data"]
    assert param.default is inspect.Parameter.empty and param.kind is inspect.Parameter.KEYWORD_ONLY
    with pytest.raises(TypeError, match="sigma_data"):
        precondition(Recorder(), torch.randn(1, 2, 4, 4), 1.0, caption_for(1))


def test_edm_scalings_are_table_1_of_the_paper():
    sigma = torch.tensor([0.01, 1.0, 50.0], dtype=torch.float64)
    for ours, hand_written in zip(edm_scalings(sigma, SD), coefficients(sigma)):
        torch.testing.assert_close(ours, hand_written)


def test_precondition_accepts_scalar_sigma():
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    d_scalar, _ = precondition(Recorder(), x, 0.7, caption_for(2), sigma_data=SD)
    d_batch, _ = precondition(Recorder(), x, torch.full((2,), 0.7, dtype=torch.float64), caption_for(2),
                               sigma_data=SD)
    torch.testing.assert_close(d_scalar, d_batch)


def test_precondition_computes_in_float32_at_least():
    x = torch.randn(2, 2, 4, 4).to(torch.bfloat16)
    denoised, _ = precondition(lambda x, c, y, **kw: x, x, 1.0, caption_for(2), sigma_data=SD)
    assert denoised.dtype == torch.float32


def test_denoiser_tends_to_identity_as_sigma_goes_to_zero():
    torch.manual_seed(0)
    net = nn.Conv2d(2, 2, 3, padding=1).double()  # a random network F

    def f(x, c_noise, caption, caption_mask=None, mask_ratio=0.0):
        return Out(net(x) + c_noise.view(-1, 1, 1, 1))

    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    gaps = [(precondition(f, x, sigma, caption_for(2), sigma_data=SD)[0] - x).abs().max().item()
            for sigma in (1e-2, 1e-4, 1e-6)]
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 1e-5


# -----------------------------------------------------------------------------
# Training noise levels

def test_draw_training_sigmas_are_lognormal_with_p_mean_and_p_std():
    cfg = EDMConfig()
    sigma = draw_training_sigmas(20000, cfg, torch.Generator().manual_seed(0))
    assert sigma.shape == (20000,) and (sigma > 0).all()
    assert abs(sigma.log().mean().item() - cfg.p_mean) < 0.03
    assert abs(sigma.log().std().item() - cfg.p_std) < 0.03


def test_draw_training_sigmas_are_reproducible_with_a_generator():
    cfg = EDMConfig(p_mean=0.0, p_std=0.6)
    a = draw_training_sigmas(8, cfg, torch.Generator().manual_seed(3))
    b = draw_training_sigmas(8, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


# -----------------------------------------------------------------------------
# Loss

def test_loss_is_lambda_weighted_squared_error():
    x0 = torch.randn(4, 2, 4, 4, dtype=torch.float64)
    delta = 0.3
    out = EDMLoss(EDMConfig())(Oracle(x0, delta), x0, caption_for(4), generator=torch.Generator().manual_seed(0))
    weight = (out.sigma ** 2 + SD ** 2) / (out.sigma * SD) ** 2
    assert out.per_sample.shape == (4,) and out.sigma.shape == (4,) and out.loss.shape == ()
    torch.testing.assert_close(out.per_sample, weight * delta ** 2)
    torch.testing.assert_close(out.loss, out.per_sample.mean())


def test_band_weight_multiplies_lambda_inside_the_band_only():
    x0 = torch.randn(4, 2, 4, 4, dtype=torch.float64)
    sigma = torch.tensor([0.5, 1.0, 3.0, 7.0], dtype=torch.float64)          # below, at the edge, inside, above
    plain = EDMLoss(EDMConfig())(Oracle(x0, 0.3), x0, caption_for(4), sigma=sigma, noise=torch.zeros_like(x0))
    banded = EDMLoss(EDMConfig(band_weight=3.0, band_min=1.0, band_max=6.0))(
        Oracle(x0, 0.3), x0, caption_for(4), sigma=sigma, noise=torch.zeros_like(x0))
    torch.testing.assert_close(banded.per_sample / plain.per_sample, torch.tensor([1.0, 3.0, 3.0, 1.0],
                                                                                   dtype=torch.float64))
    with pytest.raises(ValueError, match="band_min"):
        EDMConfig(band_min=6.0, band_max=1.0)


def test_loss_is_zero_for_a_perfect_denoiser():
    x0 = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    out = EDMLoss()(Oracle(x0, 0.0), x0, caption_for(2))
    assert out.loss.item() < 1e-20


def test_masked_loss_counts_only_kept_patches():
    # 8x8 latents, patch 2 -> T = 16 patches; the oracle is perfect on kept patches, wrong on dropped ones
    x0 = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    keep = torch.rand(2, 16, generator=torch.Generator().manual_seed(0)).argsort(1) < 4       # (B, T)
    dropped = ~keep.view(2, 1, 4, 4).repeat_interleave(2, 2).repeat_interleave(2, 3)         # (B, 1, H, W)
    error = 5.0 * dropped.to(torch.float64)
    loss_fn = EDMLoss()

    masked = loss_fn(Oracle(x0, error, keep), x0, caption_for(2), mask_ratio=0.75)
    unmasked = loss_fn(Oracle(x0, error, keep), x0, caption_for(2), mask_ratio=0.0)
    wrong_on_kept = loss_fn(Oracle(x0, 5.0 - error, keep), x0, caption_for(2), mask_ratio=0.75)
    assert masked.per_sample.shape == (2,)
    assert masked.loss.item() < 1e-20
    assert unmasked.loss.item() > 1.0 and wrong_on_kept.loss.item() > 1.0


def test_masked_loss_averages_within_patches_then_over_each_samples_kept_patches():
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 3, 4, 6, dtype=torch.float64, generator=gen)
    error = torch.randn(2, 3, 4, 6, dtype=torch.float64, generator=gen)
    keep = torch.tensor([[1, 0, 0, 1, 1, 0], [0, 1, 0, 0, 0, 0]], dtype=torch.bool)  # (B, T), unequal counts
    out = EDMLoss()(Oracle(x0, error, keep), x0, caption_for(2), mask_ratio=0.5, generator=gen)

    for b in range(2):
        weight = (out.sigma[b] ** 2 + SD ** 2) / (out.sigma[b] * SD) ** 2
        patches = [error[b, :, 2 * (t // 3):2 * (t // 3) + 2, 2 * (t % 3):2 * (t % 3) + 2].pow(2).mean()
                   for t in range(6) if keep[b, t]]
        torch.testing.assert_close(out.per_sample[b], weight * sum(patches) / len(patches))


def test_loss_is_reproducible_with_a_generator():
    x0 = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    a = EDMLoss()(Oracle(x0, 0.1 * x0), x0, caption_for(3), generator=torch.Generator().manual_seed(7))
    b = EDMLoss()(Oracle(x0, 0.1 * x0), x0, caption_for(3), generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.sigma, b.sigma) and torch.equal(a.per_sample, b.per_sample)


def test_patch_loss_rejects_a_keep_mask_that_does_not_tile_the_image():
    with pytest.raises(ValueError, match="5 patches"):
        patch_loss(torch.zeros(1, 1, 4, 4), torch.ones(1, 5, dtype=torch.bool))


def test_loss_per_sigma_bin_averages_each_bin_and_skips_empty_ones():
    per_sample = torch.tensor([1.0, 3.0, 10.0, 7.0])
    sigma = torch.tensor([0.05, 0.07, 1.5, 200.0])  # the last is outside the edges
    bins = loss_per_sigma_bin(per_sample, sigma, edges=(0.002, 0.1, 1.0, 2.0, 80.0))
    assert bins == {"0.002-0.1": 2.0, "1-2": 10.0}
    assert math.isclose(sum(loss_per_sigma_bin(per_sample[:3], sigma[:3]).values()), 2.0 + 10.0)
