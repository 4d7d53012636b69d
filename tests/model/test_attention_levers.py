"""Attention levers (2-D RoPE, cosine-similarity attention): off in the presets, relative in position, applied to
the kept tokens' own positions under masking, and the same math in forward and in the diagnostics."""

import math

import pytest
import torch
import torch.nn.functional as F

from workbench.config import MicroDiTConfig
from workbench.model import MicroDiT
from workbench.model.blocks import Attention
from workbench.model.rope import apply_rope, rope_2d_tables


def test_every_preset_has_the_attention_levers_off():
    for name in ("xl_2", "tiny_2", "nano", "micro"):
        with torch.device("meta"):
            model = MicroDiT.from_preset(name)
        assert not model.arch.rope and not model.arch.cosine_attention
        assert not any("qk_scale" in k for k in model.state_dict())


def test_rope_scores_depend_only_on_the_offset_between_tokens():
    cos, sin = rope_2d_tables(head_dim=16, grid_h=6, grid_w=6)           # (36, 16)
    q, k = torch.randn(16), torch.randn(16)

    def score(i: int, j: int) -> float:
        rotated = [apply_rope(t.view(1, 1, 1, 16), cos[n].view(1, 1, 1, 16), sin[n].view(1, 1, 1, 16))
                   for t, n in ((q, i), (k, j))]
        return (rotated[0] * rotated[1]).sum().item()

    def at(row: int, col: int) -> int:                                   # row-major token index
        return 6 * row + col

    assert score(at(0, 0), at(1, 2)) == pytest.approx(score(at(3, 2), at(4, 4)), abs=1e-5)
    assert score(at(2, 5), at(2, 1)) == pytest.approx(score(at(4, 4), at(4, 0)), abs=1e-5)
    assert score(at(0, 0), at(1, 2)) != pytest.approx(score(at(0, 0), at(2, 1)), abs=1e-3)   # rows != columns
    assert score(at(3, 3), at(3, 3)) == pytest.approx((q * k).sum().item(), abs=1e-5)       # no offset: plain dot


def test_rope_under_masking_uses_each_kept_token_s_own_position(caption_batch):
    torch.manual_seed(0)
    model = MicroDiT.from_preset("nano", rope=True, mixer_depth=0).eval()
    model.final_layer.linear.weight.data.normal_(std=0.02)              # a non-zero head, so outputs differ
    for block in model.blocks:
        block.adaln.weight.data.normal_(std=0.02)
    caption, mask = caption_batch()
    x, c_noise = torch.randn(2, 3, 16, 16), torch.zeros(2)
    noise = torch.rand(2, 64)
    reordered = noise.clone()                                            # the same kept set in another order
    kept = noise.argsort(dim=1)[:, :32]
    reordered.scatter_(1, kept, noise.gather(1, kept.flip(1)))
    with torch.no_grad():
        a = model(x, c_noise, caption, mask, 0.5, mask_noise=noise)
        b = model(x, c_noise, caption, mask, 0.5, mask_noise=reordered)
    assert torch.equal(a.keep, b.keep)
    torch.testing.assert_close(a.sample, b.sample, rtol=1e-5, atol=1e-6)
    plain = MicroDiT.from_preset("nano", mixer_depth=0).eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():                                                # and the rotation does change the output
        assert not torch.allclose(plain(x, c_noise, caption, mask, 0.5, mask_noise=noise).sample, a.sample, atol=1e-4)


def test_cosine_attention_is_softmax_of_scaled_cosines_in_forward_and_in_the_diagnostics():
    torch.manual_seed(0)
    attn = Attention(dim=64, inner_dim=64, head_dim=16, cosine=True)
    with torch.no_grad():
        attn.qk_scale.copy_(torch.tensor([2.0, 5.0, 10.0, 20.0]).view(4, 1, 1))
    x = torch.randn(2, 9, 64)
    q, k, v = (t.unflatten(-1, (4, 16)).transpose(1, 2) for t in attn.qkv(x).chunk(3, dim=-1))   # (B, H, N, hd)
    cosines = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-1, -2)                    # (B, H, N, N)
    probs = (cosines * attn.qk_scale).softmax(dim=-1)
    torch.testing.assert_close(attn.attention_weights(x), probs, rtol=1e-5, atol=1e-6)
    expected = attn.proj((probs @ v).transpose(1, 2).flatten(2))
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-6)
    assert attn.softmax_scale == 1.0 and Attention(64, 64, 16).softmax_scale == 1 / math.sqrt(16)


def test_attention_levers_train_and_are_validated(caption_batch):
    model = MicroDiT.from_preset("nano", rope=True, cosine_attention=True, depth=2)
    model.final_layer.linear.weight.data.normal_(std=0.02)
    for block in model.blocks:
        block.adaln.weight.data.normal_(std=0.02)
    caption, mask = caption_batch()
    model(torch.randn(2, 3, 16, 16), torch.rand(2), caption, mask, mask_ratio=0.5).sample.square().mean().backward()
    assert all(block.attn.qk_scale.grad.abs().sum() > 0 for block in model.blocks)
    assert sum(model.parameter_groups().values()) == sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="head_dim"):
        MicroDiTConfig(rope=True, head_dim=30, width=60)
