"""MicroDiT: parity with the paper's parameter counts, masking, FLOPs, I/O and input validation."""

import pytest
import torch

from tests.conftest import randomize_zero_params
from workbench.model import PRESETS, MicroDiT
from workbench.model.flop_count import measure_flops
from workbench.model.microdit import block_plans

# --------------------------------------------------------------------------- parity with the paper


def meta_model(name, **overrides):
    with torch.device("meta"):
        return MicroDiT.from_preset(name, **overrides)


@pytest.mark.parametrize("name, params, moe", [("xl_2", 1_165_442_320, 604_104_704),
                                               ("tiny_2", 200_692_752, 106_991_616)])
def test_paper_presets_have_the_official_parameter_counts(name, params, moe):
    model = meta_model(name)
    assert sum(p.numel() for p in model.parameters()) == params
    assert model.moe_parameters() == moe


def test_xl_2_components_match_the_paper_appendix():
    model = meta_model("xl_2")

    def count(module):
        return sum(p.numel() for p in module.parameters())

    assert count(model.patch_embed) == 17_408
    assert count(model.t_embed) == 1_574_912
    assert count(model.caption_embed.proj) == 2_100_224
    assert count(model.caption_embed.block) == 12_847_104
    assert count(model.caption_embed.pool_mlp) == 2_100_224
    assert count(model.mixer) == 184_084_992
    assert (count(model.mixer_in), count(model.mixer_out), count(model.mixer_caption)) == (787_456, 787_200, 787_456)
    assert count(model.blocks) == 958_238_720
    assert count(model.final_layer) == 2_116_624


def test_xl_2_layerwise_scaling_matches_the_paper_table():
    qkv = [512, 640, 640, 640, 640, 640, 640, 768, 768, 768, 768, 768, 768, 768,
           896, 896, 896, 896, 896, 896, 896, 1024, 1024, 1024, 1024, 1024, 1024, 1024]
    ffn = ["D512", "M768", "D768", "M1024", "D768", "M1280", "D1024", "M1536", "D1280", "M1792", "D1280", "M2048",
           "D1536", "M2304", "D1792", "M2560", "D1792", "M2816", "D2048", "M3072", "D2304", "M3328", "D2304", "M3584",
           "D2560", "M3840", "D2816", "D2816"]
    mixer, backbone = block_plans(meta_model("xl_2").arch)
    assert [p.attn_dim for p in backbone] == qkv
    assert [("M" if p.moe else "D") + str(p.ffn_hidden) for p in backbone] == ffn
    assert [(p.attn_dim, p.ffn_hidden, p.moe) for p in mixer] == [
        (768, 2048, False), (768, 3072, True), (768, 2048, False), (768, 3072, True), (768, 2048, False),
        (768, 3072, True)]


@pytest.mark.parametrize("name, low, high", [("nano", 2e6, 5e6), ("micro", 20e6, 40e6)])
def test_cpu_presets_have_the_intended_size(name, low, high):
    assert low <= sum(p.numel() for p in meta_model(name).parameters()) <= high


# --------------------------------------------------------------------------- masking


def test_backbone_sees_only_kept_tokens(nano, caption_batch):
    seen = {"mixer": [], "backbone": []}
    for block in nano.mixer:
        block.register_forward_hook(lambda m, args, out: seen["mixer"].append(args[0].shape))
    for block in nano.blocks:
        block.register_forward_hook(lambda m, args, out: seen["backbone"].append(args[0].shape))
    caption, mask = caption_batch(batch=3)
    out = nano(torch.randn(3, 3, 32, 32), torch.zeros(3), caption, mask, mask_ratio=0.75)
    tokens = (32 // 2) ** 2
    assert seen["mixer"] == [torch.Size([3, tokens, 128])] * len(nano.mixer)
    assert seen["backbone"] == [torch.Size([3, tokens // 4, 128])] * len(nano.blocks)
    assert out.sample.shape == (3, 3, 32, 32)
    assert out.keep.shape == (3, tokens) and out.keep.sum(1).tolist() == [tokens // 4] * 3


def test_dropped_patches_get_the_zero_mask_token(nano, caption_batch):
    caption, mask = caption_batch()
    out = nano(torch.randn(2, 3, 32, 32), torch.zeros(2), caption, mask, mask_ratio=0.5)
    patches = out.sample.unfold(2, 2, 2).unfold(3, 2, 2)            # (B, C, 16, 16, 2, 2)
    patch_abs = patches.abs().sum(dim=(1, 4, 5)).flatten(1)          # (B, T)
    assert torch.all(patch_abs[~out.keep] == 0)
    assert torch.all(patch_abs[out.keep] > 0)


def test_masks_differ_per_sample_and_follow_the_generator(nano, caption_batch):
    caption, mask = caption_batch(batch=2)
    x = torch.randn(1, 3, 32, 32).expand(2, -1, -1, -1)
    run = lambda seed: nano(x, torch.zeros(2), caption, mask, 0.75, torch.Generator().manual_seed(seed)).keep  # noqa
    keep = run(1)
    assert not torch.equal(keep[0], keep[1])
    assert torch.equal(keep, run(1)) and not torch.equal(keep, run(2))


def test_no_mask_means_every_token_reaches_the_backbone(nano, caption_batch):
    seen = []
    for block in nano.blocks:
        block.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    caption, mask = caption_batch()
    x = torch.randn(2, 3, 32, 32)
    out = nano(x, torch.zeros(2), caption, mask)
    assert out.keep is None
    assert seen == [torch.Size([2, (32 // 2) ** 2, 128])] * len(nano.blocks)         # all 256 tokens, every block
    changed = x.clone()
    changed[:, :, -2:, -2:] += 1.0                                   # alter only the last patch
    delta = (nano(changed, torch.zeros(2), caption, mask).sample - out.sample).abs()
    assert delta[:, :, :2, :2].sum() > 0                             # the first patch's output sees it


# --------------------------------------------------------------------------- FLOPs


@pytest.mark.parametrize("name", ["nano", "micro"])
@pytest.mark.parametrize("mask_ratio", [0.0, 0.75])
def test_analytic_flops_match_the_flop_counter(name, mask_ratio, caption_batch):
    model = MicroDiT.from_preset(name).eval()
    caption, mask = caption_batch(batch=2)
    with torch.no_grad():
        measured = measure_flops(lambda: model(torch.randn(2, 3, 32, 32), torch.zeros(2), caption, mask, mask_ratio))
    analytic = model.flops(latent_size=32, mask_ratio=mask_ratio, batch=2)
    assert analytic == pytest.approx(measured, rel=0.02)


def test_masking_cuts_backbone_flops_about_fourfold():
    model = meta_model("xl_2")
    full, masked = model.flops(32, 0.0), model.flops(32, 0.75)
    assert 2.5 < full / masked < 4.0   # the mixer and caption path still see every token


# --------------------------------------------------------------------------- captions and positions


def test_caption_padding_is_ignored_unless_compat(nano, caption_batch):
    caption, mask = caption_batch(length=5)
    changed = caption.clone()
    changed[:, 5:] += 1.0                                            # alter only padding tokens
    x, c = torch.randn(2, 3, 32, 32), torch.zeros(2)
    assert torch.allclose(nano(x, c, caption, mask).sample, nano(x, c, changed, mask).sample, atol=1e-6)
    compat = randomize_zero_params(MicroDiT.from_preset("nano", caption_mask_compat=True)).eval()
    assert not torch.allclose(compat(x, c, caption, mask).sample, compat(x, c, changed, mask).sample, atol=1e-4)


def test_trimming_unused_caption_padding_changes_no_output(nano, caption_batch):
    from workbench.model import null_caption, trim_caption_padding

    caption, mask = caption_batch(batch=3, length=6)
    mask[1, 6:] = 0
    mask[1, 3:] = 0                                                  # rows of different lengths
    x, c = torch.randn(3, 3, 32, 32), torch.rand(3)
    short, short_mask = trim_caption_padding(caption, mask)
    assert short.shape[1] == 16 and short_mask.shape == (3, 16)     # 6 used, rounded up to a multiple of 16
    assert trim_caption_padding(*caption_batch(batch=2, length=20))[0].shape[1] == 32
    assert torch.allclose(nano(x, c, caption, mask).sample, nano(x, c, short, short_mask).sample, atol=1e-5)
    null, null_mask = null_caption(caption, mask)                   # the null caption at 77 and at 16 tokens
    short_null, short_null_mask = null_caption(short, short_mask)
    assert torch.allclose(nano(x, c, null, null_mask).sample, nano(x, c, short_null, short_null_mask).sample, atol=1e-5)
    empty = mask.clone()
    empty[2] = 0                                                     # a row with no real token: nothing trimmed
    assert trim_caption_padding(caption, empty)[0].shape[1] == 77


def test_an_all_padding_caption_is_finite(nano, caption_batch):
    caption, mask = caption_batch()
    mask[:] = 0
    assert torch.isfinite(nano(torch.randn(2, 3, 32, 32), torch.zeros(2), caption, mask).sample).all()


def test_interpolated_positions_line_up_with_the_trained_grid():
    from workbench.model import sincos_2d_positions
    base = sincos_2d_positions(64, 16, 16).view(16, 16, 64)
    doubled = sincos_2d_positions(64, 32, 32, scale=2.0).view(32, 32, 64)
    assert torch.allclose(doubled[::2, ::2], base, atol=1e-6)


def test_model_runs_at_a_new_resolution(nano, caption_batch):
    caption, mask = caption_batch()
    assert nano(torch.randn(2, 3, 64, 48), torch.zeros(2), caption, mask).sample.shape == (2, 3, 64, 48)


# --------------------------------------------------------------------------- I/O


def test_save_pretrained_round_trips_outputs(nano, caption_batch, tmp_path):
    nano.save_pretrained(tmp_path)
    loaded = MicroDiT.from_pretrained(tmp_path).eval()
    caption, mask = caption_batch()
    x, c = torch.randn(2, 3, 32, 32), torch.randn(2)
    assert loaded.arch == nano.arch
    assert torch.equal(loaded(x, c, caption, mask).sample, nano(x, c, caption, mask).sample)
    fresh = MicroDiT.from_preset("nano").load_weights(tmp_path).eval()
    assert torch.equal(fresh(x, c, caption, mask).sample, nano(x, c, caption, mask).sample)


def test_loading_weights_of_another_config_names_the_fields(nano, tmp_path):
    nano.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"width: saved 128 vs this model 256.*depth: saved 6 vs this model 4"
                                         r"|depth: saved 6 vs this model 4.*width: saved 128 vs this model 256"):
        MicroDiT.from_preset("nano", width=256, depth=4).load_weights(tmp_path)


# --------------------------------------------------------------------------- bad input


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ValueError, match="unknown MicroDiT preset 'huge'.*" + ", ".join(sorted(PRESETS))):
        MicroDiT.from_preset("huge")


def test_unknown_override_suggests_the_closest_field():
    with pytest.raises(ValueError, match="did you mean 'depth'"):
        MicroDiT.from_preset("nano", detph=3)


@pytest.mark.parametrize("field, value, expected", [("width", 100, "multiple of head_dim=32"),
                                                    ("depth", 0, "positive integer"),
                                                    ("sample_size", 33, "multiple of patch_size=2")])
def test_invalid_config_names_the_field(field, value, expected):
    with pytest.raises(ValueError, match=f"MicroDiTConfig.{field}: expected .*{expected}.*got {value}"):
        MicroDiT.from_preset("nano", **{field: value})


def test_wrong_latent_channels(nano, caption_batch):
    caption, mask = caption_batch()
    with pytest.raises(ValueError, match=r"expected latents of shape \(B, 3, H, W\), got \(2, 4, 32, 32\)"):
        nano(torch.randn(2, 4, 32, 32), torch.zeros(2), caption, mask)


def test_resolution_not_divisible_by_patch_size(nano, caption_batch):
    caption, mask = caption_batch()
    with pytest.raises(ValueError, match="divisible by patch_size=2, got 33x32"):
        nano(torch.randn(2, 3, 33, 32), torch.zeros(2), caption, mask)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_mask_ratio_outside_unit_interval(nano, caption_batch, ratio):
    caption, mask = caption_batch()
    with pytest.raises(ValueError, match=rf"mask_ratio must be in \[0, 1\), got {ratio}"):
        nano(torch.randn(2, 3, 32, 32), torch.zeros(2), caption, mask, mask_ratio=ratio)


def test_wrong_caption_dimension(nano, caption_batch):
    caption, mask = caption_batch(dim=512)
    with pytest.raises(ValueError, match=r"caption embeddings of shape \(2, L, 384\), got \(2, 77, 512\)"):
        nano(torch.randn(2, 3, 32, 32), torch.zeros(2), caption, mask)
