"""Embeddings: patches, fixed 2-D sin-cos positions, timesteps, and the caption path.

* positions are computed for the grid actually fed to the model, with an interpolation scale
  (``pos_interp_scale=2`` lets a 256 px model see 512 px latents on the positions it learned);
* the timestep embedding takes EDM's ``c_noise = ln(sigma) / 4``;
* captions go projection -> one transformer block -> masked mean -> MLP (the pooled vector).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import Attention, SwiGLU, layer_norm, swiglu_hidden


def null_caption(caption: torch.Tensor, caption_mask: torch.Tensor | None = None):
    """The null caption used for caption dropout and classifier-free guidance.

    All-zero token states with an all-ones mask (every null token visible), so training-time
    dropout and sampling-time guidance feed the model exactly the same input.
    Returns ``(zeros_like(caption), ones_like(caption_mask) or None)``.
    """
    mask = None if caption_mask is None else torch.ones_like(caption_mask)
    return torch.zeros_like(caption), mask




@lru_cache(maxsize=16)
def _sincos_2d_cached(dim: int, grid_h: int, grid_w: int, scale: float) -> torch.Tensor:
    def sincos_1d(d: int, pos: torch.Tensor) -> torch.Tensor:
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2))  # (d/2,)
        angles = pos.reshape(-1, 1) * omega                                           # (T, d/2)
        return torch.cat([angles.sin(), angles.cos()], dim=1)                          # (T, d)

    rows = torch.arange(grid_h, dtype=torch.float64) / scale                          # (h,)
    cols = torch.arange(grid_w, dtype=torch.float64) / scale                          # (w,)
    row_pos, col_pos = torch.meshgrid(rows, cols, indexing="ij")                      # (h, w) each
    # first half encodes the column, second half the row (the layout of DiT / MicroDiT checkpoints)
    emb = torch.cat([sincos_1d(dim // 2, col_pos), sincos_1d(dim // 2, row_pos)], dim=1)  # (h*w, dim)
    return emb.float()


def sincos_2d_positions(dim: int, grid_h: int, grid_w: int, scale: float = 1.0, device=None) -> torch.Tensor:
    """Fixed 2-D sin-cos position embeddings (h*w, dim) for a token grid, row-major.

    ``scale`` divides the coordinates: a 64x64 latent grid with ``scale=2`` spans the same
    coordinate range as the 32x32 grid a model was trained on. With ``device`` the table is kept
    there (one copy per grid and device), so a forward pass copies nothing from the host.
    """
    if device is not None and torch.device(device).type != "cpu":
        return _on_device(dim, grid_h, grid_w, float(scale), str(device))
    return _sincos_2d_cached(dim, grid_h, grid_w, float(scale))


@lru_cache(maxsize=16)
def _on_device(dim: int, grid_h: int, grid_w: int, scale: float, device: str) -> torch.Tensor:
    return _sincos_2d_cached(dim, grid_h, grid_w, scale).to(device)


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> tokens: (B, C, H, W) -> (B, H/p * W/p, D)."""

    def __init__(self, in_channels: int, width: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, width, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, T, D)


class Mlp(nn.Module):
    """Linear -> GELU(tanh) -> LayerNorm -> Linear, with biases (caption and pooled-caption MLPs)."""

    def __init__(self, in_dim: int, width: int, eps: float):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, width)
        self.norm = layer_norm(width, eps)
        self.fc2 = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(F.gelu(self.fc1(x), approximate="tanh")))


class TimestepEmbed(nn.Module):
    """Sinusoidal embedding ([cos, sin], ``freqs`` features) of c_noise, then an MLP: (B,) -> (B, D)."""

    def __init__(self, width: int, freqs: int = 512, max_period: float = 10000.0):
        super().__init__()
        self.freqs, self.max_period = freqs, max_period
        self.fc1 = nn.Linear(freqs, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        half = self.freqs // 2
        freqs = torch.exp(-math.log(self.max_period) * torch.arange(half, device=c_noise.device) / half)  # (F/2,)
        angles = c_noise.float()[:, None] * freqs[None]                                              # (B, F/2)
        emb = torch.cat([angles.cos(), angles.sin()], dim=-1).to(self.fc1.weight.dtype)              # (B, F)
        return self.fc2(F.gelu(self.fc1(emb), approximate="tanh"))                                  # (B, D)


class CaptionBlock(nn.Module):
    """One pre-norm transformer block over caption tokens: self-attention + SwiGLU, no modulation."""

    def __init__(self, width: int, head_dim: int, mlp_ratio: float, multiple_of: int, eps: float):
        super().__init__()
        self.norm1 = layer_norm(width, eps)
        self.attn = Attention(width, width, head_dim, eps=eps)
        self.norm2 = layer_norm(width, eps)
        self.ffn = SwiGLU(width, swiglu_hidden(width, mlp_ratio, multiple_of))

    def forward(self, y: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        y = y + self.attn(self.norm1(y), key_mask=mask)  # (B, L, D)
        return y + self.ffn(self.norm2(y))               # (B, L, D)


class CaptionEmbed(nn.Module):
    """Caption tokens (B, L, caption_dim) -> tokens (B, L, D) for cross-attention and a pooled (B, D)."""

    def __init__(self, caption_dim: int, width: int, head_dim: int, mlp_ratio: float, multiple_of: int, eps: float):
        super().__init__()
        self.proj = Mlp(caption_dim, width, eps)
        self.block = CaptionBlock(width, head_dim, mlp_ratio, multiple_of, eps)
        self.pool_mlp = Mlp(width, width, eps)

    def forward(self, caption: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.block(self.proj(caption), mask)                              # (B, L, D)
        if mask is None:
            pooled = y.mean(dim=1)                                            # (B, D)
        else:
            weights = mask.to(y.dtype).unsqueeze(-1)                          # (B, L, 1)
            pooled = (y * weights).sum(1) / weights.sum(1).clamp_min(1)       # (B, D)
        return y, self.pool_mlp(pooled)
