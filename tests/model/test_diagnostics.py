"""Attention-locality diagnostics: the statistics, and that they see what the model computes."""

import math

import pytest
import torch

from workbench.model import AttentionRecorder
from workbench.model.blocks import Attention
from workbench.model.diagnostics import grid_distances, locality_stats


def test_identity_attention_is_fully_local_and_uniform_attention_is_not():
    t = 12  # a 3 x 4 grid
    identity = torch.eye(t).expand(2, 3, t, t)                    # (B, H, T, T)
    entropy, distance, uniform = locality_stats(identity, 3, 4)
    assert entropy == pytest.approx([0.0] * 3, abs=1e-6) and distance == pytest.approx([0.0] * 3)
    flat = torch.full((2, 3, t, t), 1.0 / t)
    entropy, distance, uniform = locality_stats(flat, 3, 4)
    assert entropy == pytest.approx([1.0] * 3) and distance == pytest.approx([uniform] * 3)
    assert uniform == pytest.approx(grid_distances(3, 4).mean().item()) and uniform > 1


def test_attending_to_the_right_neighbour_is_distance_one():
    t = 6  # a 2 x 3 grid; every query looks at the patch to its right (the last column at itself)
    probs = torch.zeros(1, 1, t, t)
    for q in range(t):
        probs[0, 0, q, q + 1 if q % 3 < 2 else q] = 1.0
    _, distance, _ = locality_stats(probs, 2, 3)
    assert distance == pytest.approx([4 / 6])                    # 4 queries at distance 1, 2 at 0


def test_attention_weights_are_the_ones_forward_uses():
    torch.manual_seed(0)
    for cross in (False, True):
        attn = Attention(32, 64, 16, cross=cross).eval()
        x, context = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
        mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0], [1] * 7]).bool() if cross else None
        ctx = context if cross else None
        probs = attn.attention_weights(x, ctx, mask)              # (B, H, N, L)
        _, _, v = attn._heads(x, ctx)
        expected = attn.proj((probs @ v).transpose(1, 2).flatten(2))
        assert torch.allclose(attn(x, ctx, key_mask=mask), expected, atol=1e-5)
        assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5)
        if cross:
            assert probs[0, :, :, 3:].abs().max() == 0            # padding gets no attention


def test_recorder_reports_every_patch_self_attention(nano, caption_batch):
    caption, mask = caption_batch()
    with AttentionRecorder(nano) as rec:
        nano(torch.randn(2, 3, 32, 32), torch.zeros(2), caption, mask)
    rows = rec.locality()
    expected = ([f"mixer.{i}.attn" for i in range(len(nano.mixer))]
                + [f"blocks.{i}.attn" for i in range(len(nano.blocks))])
    assert [r.name for r in rows] == expected
    modules = dict(nano.named_modules())
    t = 16 * 16
    for row in rows:
        assert len(row.entropy) == len(row.distance) == modules[row.name].heads
        assert all(0 <= e <= 1 + 1e-6 for e in row.entropy)
        assert all(0 <= d <= math.hypot(15, 15) for d in row.distance)
        assert row.uniform_distance == pytest.approx(grid_distances(16, 16).mean().item(), rel=1e-4)
    assert rec.probs["blocks.0.attn"].shape == (2, modules["blocks.0.attn"].heads, t, t)
    assert not nano._forward_pre_hooks and not modules["blocks.0.attn"]._forward_pre_hooks  # hooks removed


def test_recorder_needs_an_unmasked_forward(nano, caption_batch):
    caption, mask = caption_batch()
    with AttentionRecorder(nano) as rec:
        pass
    with pytest.raises(RuntimeError, match="nothing recorded"):
        rec.locality()
    with AttentionRecorder(nano) as rec:
        nano(torch.randn(2, 3, 32, 32), torch.zeros(2), caption, mask, mask_ratio=0.75)
    with pytest.raises(ValueError, match="mask_ratio=0"):
        rec.locality()
