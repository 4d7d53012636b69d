"""Locality levers (conv stem, U-ViT long skips, output conv): off in the presets, identity at start where
promised, counted in the analytic FLOPs, and trainable."""

import pytest
import torch

from tests.conftest import randomize_zero_params
from workbench.config import MicroDiTConfig
from workbench.model import MicroDiT
from workbench.model.flop_count import measure_flops
from workbench.model.locality import LongSkips

LEVERS = {"conv_stem": 32, "long_skips": True, "output_conv": True}


def test_every_preset_has_every_lever_off():
    for name in ("xl_2", "tiny_2", "nano", "micro"):
        with torch.device("meta"):
            model = MicroDiT.from_preset(name)
        assert model.stem is None and model.skip_joins is None and model.out_conv is None
        assert not any(k.startswith(("stem.", "skip_joins.", "out_conv.")) for k in model.state_dict())


@pytest.mark.parametrize("lever", ["long_skips", "output_conv"])
def test_skips_and_output_conv_start_as_the_plain_model(lever, caption_batch):
    torch.manual_seed(0)
    plain = randomize_zero_params(MicroDiT.from_preset("nano")).eval()
    with_lever = MicroDiT.from_preset("nano", **{lever: True}).eval()
    missing, unexpected = with_lever.load_state_dict(plain.state_dict(), strict=False)
    prefix = {"long_skips": "skip_joins", "output_conv": "out_conv"}[lever]
    assert unexpected == [] and missing and all(k.startswith(prefix) for k in missing)
    caption, mask = caption_batch()
    x, c_noise = torch.randn(2, 3, 16, 16), torch.zeros(2)
    with torch.no_grad():
        for ratio in (0.0, 0.75):
            gen_a, gen_b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
            a = plain(x, c_noise, caption, mask, ratio, generator=gen_a).sample
            b = with_lever(x, c_noise, caption, mask, ratio, generator=gen_b).sample
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_long_skips_join_block_i_to_block_depth_minus_1_minus_i():
    skips_module, seen = LongSkips(depth=5, width=4), []
    for linear in skips_module.joins:          # make each join output its skip alone: [0 | I]
        linear.weight.data.zero_()
        linear.weight.data[:, 4:] = torch.eye(4)
    skips, tokens = [], torch.zeros(1, 1, 4)
    for i in range(5):
        tokens = skips_module.join(i, tokens, skips)
        seen.append(int(tokens[0, 0, 0]))
        tokens = torch.full((1, 1, 4), float(10 + i))           # "block i" outputs 10 + i
        skips_module.push(i, tokens, skips)
    # each block's input: block 2 (the middle) receives no skip; block 3 gets block 1's output, block 4 block 0's
    assert seen == [0, 10, 11, 11, 10] and skips == []


@pytest.mark.parametrize("mask_ratio", [0.0, 0.75])
def test_analytic_flops_count_the_levers(mask_ratio, caption_batch):
    model = MicroDiT.from_preset("nano", **LEVERS).eval()
    plain = MicroDiT.from_preset("nano").eval()
    caption, mask = caption_batch(batch=2)
    with torch.no_grad():
        measured = measure_flops(lambda: model(torch.randn(2, 3, 32, 32), torch.zeros(2), caption, mask, mask_ratio))
    analytic = model.flops(latent_size=32, mask_ratio=mask_ratio, batch=2)
    assert analytic == pytest.approx(measured, rel=0.02)
    assert analytic > plain.flops(latent_size=32, mask_ratio=mask_ratio, batch=2)


def test_levers_train_and_their_parameters_are_counted(caption_batch):
    torch.manual_seed(0)
    model = MicroDiT.from_preset("nano", depth=4, **LEVERS)
    assert sum(model.parameter_groups().values()) == sum(p.numel() for p in model.parameters())
    caption, mask = caption_batch()
    out = model(torch.randn(2, 3, 16, 16), torch.rand(2), caption, mask, mask_ratio=0.5).sample
    model.final_layer.linear.weight.data.normal_(std=0.02)      # let gradients reach past the zero-initialised head
    out = model(torch.randn(2, 3, 16, 16), torch.rand(2), caption, mask, mask_ratio=0.5).sample
    out.square().mean().backward()
    for part in (model.stem, model.skip_joins, model.out_conv):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


def test_conv_stem_is_validated_by_type_and_range():
    with pytest.raises(ValueError, match="conv_stem"):
        MicroDiTConfig(conv_stem=-1)
