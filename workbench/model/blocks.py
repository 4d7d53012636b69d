"""Transformer pieces: QK-normalised attention (SDPA), SwiGLU, adaLN-Zero DiT block, final layer.

Block (the paper's DiT block, Sehwag et al. 2025)::

    x += g1 * SelfAttn(modulate(LN x))
    x += CrossAttn(LN x, caption)          # neither gated nor modulated
    x += g2 * FFN(modulate(LN x))          # SwiGLU or expert-choice MoE
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .rope import apply_rope


def layer_norm(dim: int, eps: float, affine: bool = True) -> nn.LayerNorm:
    """LayerNorm without bias (weight only when ``affine``), as in MicroDiT."""
    return nn.LayerNorm(dim, eps=eps, elementwise_affine=affine, bias=False)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation: (B, T, D) * (1 + scale) + shift with (B, 1, D) shift and scale."""
    return x * (1 + scale) + shift


def round_up(value: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``value``."""
    return multiple * math.ceil(value / multiple)


def attention_inner_dim(width: int, ratio: float, head_dim: int) -> int:
    """Layer-wise scaled attention width: ``2*hd*ceil(int(width*ratio) / (2*hd))`` (``width`` at ratio 1)."""
    return width if ratio == 1.0 else round_up(int(width * ratio), 2 * head_dim)


def swiglu_hidden(width: int, ratio: float, multiple_of: int) -> int:
    """SwiGLU hidden size: 2/3 of ``width*ratio`` rounded up to ``multiple_of``."""
    return round_up(int(2 * int(width * ratio) / 3), multiple_of)


def expert_hidden(width: int, ratio: float, multiple_of: int) -> int:
    """Per-expert GELU-MLP hidden size: ``width*ratio`` rounded up to ``multiple_of``."""
    return round_up(int(width * ratio), multiple_of)


class Attention(nn.Module):
    """Multi-head self- or cross-attention with QK-LayerNorm over the whole inner dim.

    Args:
        dim: input and output width.
        inner_dim: q/k/v width (``inner_dim // head_dim`` heads).
        head_dim: size of each head.
        cross: when True, keys and values come from a ``context`` of width ``dim``.
        eps: LayerNorm epsilon of the (non-affine) q and k norms.
        cosine: cosine-similarity attention instead: per-head unit q and k, logits times a learnt
            per-head scale that starts at 10 (HDiT, Crowson et al. 2024; ``MicroDiTConfig.cosine_attention``).

    ``forward(x, context, key_mask, rope)``: ``rope`` is a ``(cos, sin)`` pair of 2-D RoPE tables
    (``workbench.model.rope``) that rotates q and k of a self-attention.
    """

    def __init__(self, dim: int, inner_dim: int, head_dim: int, cross: bool = False, eps: float = 1e-6,
                 cosine: bool = False):
        super().__init__()
        self.heads, self.head_dim, self.cross = inner_dim // head_dim, head_dim, cross
        self.qk_scale = nn.Parameter(torch.full((self.heads, 1, 1), 10.0)) if cosine else None    # (H, 1, 1)
        if cross:
            self.q = nn.Linear(dim, inner_dim, bias=False)
            self.kv = nn.Linear(dim, 2 * inner_dim, bias=False)
        else:
            self.qkv = nn.Linear(dim, 3 * inner_dim, bias=False)
        self.q_norm = layer_norm(inner_dim, eps, affine=False)
        self.k_norm = layer_norm(inner_dim, eps, affine=False)
        self.proj = nn.Linear(inner_dim, dim, bias=False)

    @property
    def softmax_scale(self) -> float:
        """The factor on q.k before the softmax: 1/sqrt(hd), or 1 for cosine attention (its scale is in q)."""
        return 1.0 if self.qk_scale is not None else 1.0 / math.sqrt(self.head_dim)

    def _heads(self, x: torch.Tensor, context: torch.Tensor | None, rope: tuple | None = None):
        """Normalised q, k and v split into heads: (B, H, N, hd), (B, H, L, hd), (B, H, L, hd)."""
        if self.cross:
            q = self.q(x)                                   # (B, N, I)
            k, v = self.kv(context).chunk(2, dim=-1)        # (B, L, I) each
        else:
            q, k, v = self.qkv(x).chunk(3, dim=-1)          # (B, N, I) each
        if self.qk_scale is None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = self._split(q), self._split(k), self._split(v)
        if self.qk_scale is not None:                       # q.k = scale * cos(q, k)
            q = F.normalize(q, dim=-1) * self.qk_scale.sqrt()                         # (B, H, N, hd)
            k = F.normalize(k, dim=-1) * self.qk_scale.sqrt()                         # (B, H, L, hd)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if q.dtype != v.dtype:                              # autocast: the norms run in fp32
            q, k = q.to(v.dtype), k.to(v.dtype)
        return q, k, v

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)        # (B, N, I) -> (B, H, N, hd)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                key_mask: torch.Tensor | None = None, rope: tuple | None = None) -> torch.Tensor:
        q, k, v = self._heads(x, context, rope)             # (B, H, N, hd), (B, H, L, hd) x2
        attn_mask = None if key_mask is None else key_mask.bool()[:, None, None, :]    # (B, 1, 1, L)
        scale = None if self.qk_scale is None else self.softmax_scale                  # None: SDPA's 1/sqrt(hd)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)  # (B, H, N, hd)
        return self.proj(out.transpose(1, 2).flatten(2))    # (B, N, D)

    def attention_weights(self, x: torch.Tensor, context: torch.Tensor | None = None,
                          key_mask: torch.Tensor | None = None, rope: tuple | None = None) -> torch.Tensor:
        """The softmax attention probabilities ``forward`` uses: (B, H, N, L) (for diagnostics)."""
        q, k, _ = self._heads(x, context, rope)             # (B, H, N, hd), (B, H, L, hd)
        logits = q @ k.transpose(-1, -2) * self.softmax_scale                          # (B, H, N, L)
        if key_mask is not None:
            logits = logits.masked_fill(~key_mask.bool()[:, None, None, :], float("-inf"))
        return logits.softmax(dim=-1)                       # (B, H, N, L)


class SwiGLU(nn.Module):
    """Dense FFN ``w3(silu(w1 x) * w2 x)`` without biases."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))  # (B, T, D)


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block with self-attention, cross-attention to captions, and an FFN.

    Args:
        width: token width of this block.
        cond_width: width of the conditioning vector ``c`` (the backbone width, also for mixer blocks).
        attn_dim: self-attention inner dim (layer-wise scaled).
        head_dim: attention head size.
        ffn: the feed-forward module (``SwiGLU`` or ``ExpertChoiceMoE``).
        eps: LayerNorm epsilon.
        cosine_attention: cosine-similarity self-attention (``Attention(cosine=True)``).

    ``forward(x, c, context, context_mask, rope)``: ``rope`` (cos, sin) rotates the self-attention's q and k.
    """

    def __init__(self, width: int, cond_width: int, attn_dim: int, head_dim: int, ffn: nn.Module, eps: float,
                 cosine_attention: bool = False):
        super().__init__()
        self.norm1 = layer_norm(width, eps)
        self.attn = Attention(width, attn_dim, head_dim, eps=eps, cosine=cosine_attention)
        self.norm2 = layer_norm(width, eps)
        self.cross_attn = Attention(width, width, head_dim, cross=True, eps=eps)
        self.norm3 = layer_norm(width, eps)
        self.ffn = ffn
        self.adaln = nn.Linear(cond_width, 6 * width)

    def forward(self, x: torch.Tensor, c: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor | None = None, rope: tuple | None = None) -> torch.Tensor:
        modulation = self.adaln(F.gelu(c, approximate="tanh"))[:, None]                          # (B, 1, 6D)
        shift1, scale1, gate1, shift2, scale2, gate2 = modulation.chunk(6, dim=-1)               # (B, 1, D) each
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1), rope=rope)            # (B, T, D)
        x = x + self.cross_attn(self.norm2(x), context, key_mask=context_mask)                  # (B, T, D)
        return x + gate2 * self.ffn(modulate(self.norm3(x), shift2, scale2))                    # (B, T, D)


class FinalLayer(nn.Module):
    """LayerNorm -> adaLN modulation -> Linear to p*p*C output values per token."""

    def __init__(self, width: int, out_dim: int, eps: float):
        super().__init__()
        self.norm = layer_norm(width, eps)
        self.adaln = nn.Linear(width, 2 * width)
        self.linear = nn.Linear(width, out_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaln(F.gelu(c, approximate="tanh"))[:, None].chunk(2, dim=-1)  # (B, 1, D) each
        return self.linear(modulate(self.norm(x), shift, scale))                  # (B, T, p*p*C)
