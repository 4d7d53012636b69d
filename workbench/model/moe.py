"""Expert-choice mixture-of-experts FFN (Zhou et al. 2022), as used by MicroDiT.

Each expert picks its own top-``k`` tokens per image (``k = int(capacity * T / E)``), so the
load is balanced by construction and no auxiliary loss is needed. A token picked by no expert
gets exactly zero FFN output (only the residual passes). Dispatch is an index gather, one
batched matmul over experts, and a scatter-add back: no dense (B, E, k, T) one-hot tensors.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def tokens_per_expert(tokens: int, num_experts: int, capacity: float) -> int:
    """Tokens each expert processes per image: ``int(capacity * T / E)``, at least 1."""
    return max(1, int(capacity * tokens / num_experts))


class ExpertChoiceMoE(nn.Module):
    """Expert-choice MoE of 2-layer GELU MLPs without biases.

    Args:
        dim: token width.
        hidden: per-expert hidden size.
        num_experts: E.
        capacity: expert capacity factor (2.0 in the paper): on average each token visits
            ``capacity`` experts.

    Example::

        moe = ExpertChoiceMoE(dim=64, hidden=128, num_experts=4, capacity=2.0)
        y = moe(torch.randn(2, 16, 64))   # (2, 16, 64)
    """

    def __init__(self, dim: int, hidden: int, num_experts: int, capacity: float):
        super().__init__()
        self.num_experts, self.capacity = num_experts, capacity
        self.gate = nn.Linear(dim, num_experts, bias=False)
        self.w1 = nn.Parameter(torch.empty(num_experts, dim, hidden))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, dim))
        nn.init.trunc_normal_(self.w1, std=0.02)
        nn.init.trunc_normal_(self.w2, std=0.02)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Expert choice: returns gate weights (B, E, k) and token indices (B, E, k)."""
        logits = self.gate(x)                                              # (B, T, E)
        probs = F.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)  # (B, T, E)
        k = tokens_per_expert(x.shape[1], self.num_experts, self.capacity)
        weights, index = probs.transpose(1, 2).topk(k, dim=-1)             # (B, E, k) each
        return weights, index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        weights, index = self.route(x)                                     # (B, E, k)
        e, k = index.shape[1], index.shape[2]
        flat_index = index.reshape(b, e * k, 1).expand(-1, -1, d)          # (B, E*k, D)
        xin = x.gather(1, flat_index).view(b, e, k, d)                     # (B, E, k, D)
        xin = xin.transpose(0, 1).reshape(e, b * k, d)                     # (E, B*k, D)
        h = F.gelu(torch.bmm(xin, self.w1))                    # (E, B*k, H)
        h = torch.bmm(h, self.w2)                              # (E, B*k, D)
        h = h.view(e, b, k, d).transpose(0, 1) * weights.unsqueeze(-1)     # (B, E, k, D)
        out = torch.zeros_like(x)                                          # (B, T, D)
        return out.scatter_add(1, flat_index, h.reshape(b, e * k, d).to(x.dtype))      # (B, T, D)
