"""Expert-choice MoE: capacity, equivalence with a slow reference, zero output for unpicked tokens."""

import torch
import torch.nn.functional as F

from workbench.model.moe import ExpertChoiceMoE, tokens_per_expert


def make_moe(seed=0, dim=16, hidden=32, experts=4, capacity=2.0):
    torch.manual_seed(seed)
    return ExpertChoiceMoE(dim, hidden, experts, capacity).double()


def reference_moe(moe: ExpertChoiceMoE, x: torch.Tensor) -> torch.Tensor:
    """Slow per-image, per-expert loop following the definition of expert-choice routing."""
    out = torch.zeros_like(x)
    k = tokens_per_expert(x.shape[1], moe.num_experts, moe.capacity)
    for b in range(x.shape[0]):
        probs = F.softmax(moe.gate(x[b]), dim=-1)                   # (T, E)
        for e in range(moe.num_experts):
            weight, picked = probs[:, e].topk(k)                       # (k,)
            h = F.gelu(x[b, picked] @ moe.w1[e]) @ moe.w2[e]           # (k, D)
            out[b].index_add_(0, picked, weight[:, None] * h)
    return out


def test_each_expert_processes_exactly_k_tokens_per_image():
    moe = make_moe()
    x = torch.randn(3, 24, 16, dtype=torch.float64)
    weights, index = moe.route(x)
    k = int(2.0 * 24 / 4)
    assert index.shape == weights.shape == (3, 4, k)
    for b in range(3):
        for e in range(4):
            assert len(set(index[b, e].tolist())) == k   # k distinct tokens


def test_output_equals_the_slow_per_expert_reference():
    moe = make_moe(seed=1)
    x = torch.randn(2, 20, 16, dtype=torch.float64)
    torch.testing.assert_close(moe(x), reference_moe(moe, x), rtol=1e-10, atol=1e-12)


def test_tokens_no_expert_picks_get_exactly_zero_output():
    moe = make_moe(seed=2, capacity=0.5)                              # few picks: many tokens unselected
    x = torch.randn(2, 32, 16, dtype=torch.float64)
    _, index = moe.route(x)
    out = moe(x)
    for b in range(2):
        picked = set(index[b].flatten().tolist())
        unpicked = [t for t in range(32) if t not in picked]
        assert unpicked, "the test needs unselected tokens"
        assert torch.all(out[b, unpicked] == 0)
        assert torch.all(out[b, sorted(picked)].abs().sum(-1) > 0)


def test_capacity_follows_the_current_token_count():
    assert tokens_per_expert(256, 8, 2.0) == 64     # all tokens at 256 px
    assert tokens_per_expert(64, 8, 2.0) == 16      # after 75% masking
    assert tokens_per_expert(3, 8, 2.0) == 1        # never zero


def test_moe_backward_reaches_experts_and_gate():
    moe = make_moe(seed=3)
    moe(torch.randn(2, 16, 16, dtype=torch.float64)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in moe.parameters())
