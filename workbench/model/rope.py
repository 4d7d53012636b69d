"""2-D rotary position embeddings (axial RoPE) for self-attention over a token grid.

Half of each head's channels rotate with the token's row, the other half with its column, so a
query-key dot product depends on their relative offset (Su et al. 2021, RoFormer; axial 2-D form as
in HDiT, Crowson et al. 2024). It is a locality lever for small images (``MicroDiTConfig.rope``)::

    cos, sin = rope_2d_tables(head_dim=32, grid_h=8, grid_w=8)     # (64, 32) each, row-major tokens
    q = apply_rope(q, cos, sin)                                     # q (B, H, 64, 32)
"""

from __future__ import annotations

from functools import lru_cache

import torch
from ..errors import InputError

ROPE_BASE = 100.0            # wavelengths up to ~100 patches: grids here are 4x4 to 32x32 tokens


@lru_cache(maxsize=32)
def _tables(head_dim: int, grid_h: int, grid_w: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    quarter = head_dim // 4
    freqs = ROPE_BASE ** (-torch.arange(quarter, dtype=torch.float64) / quarter)             # (hd/4,)
    rows = torch.arange(grid_h, dtype=torch.float64).repeat_interleave(grid_w) / scale       # (T,)
    cols = torch.arange(grid_w, dtype=torch.float64).repeat(grid_h) / scale                  # (T,)
    angles = torch.cat([rows[:, None] * freqs, cols[:, None] * freqs], dim=1)                 # (T, hd/2)
    angles = angles.repeat_interleave(2, dim=1)                                              # (T, hd): pairs
    return angles.cos().float(), angles.sin().float()


def rope_2d_tables(head_dim: int, grid_h: int, grid_w: int, scale: float = 1.0,
                   device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos`` and ``sin`` (h*w, head_dim) for a row-major token grid; ``scale`` divides the coordinates
    (``pos_interp_scale``, as for the sin-cos positions). ``head_dim`` must be a multiple of 4. With
    ``device`` the tables are kept there (one copy per grid and device)."""
    if head_dim % 4:
        raise InputError(f"2-D RoPE needs head_dim divisible by 4, got {head_dim}")
    if device is not None and torch.device(device).type != "cpu":
        return _tables_on(head_dim, grid_h, grid_w, float(scale), str(device))
    return _tables(head_dim, grid_h, grid_w, float(scale))


@lru_cache(maxsize=32)
def _tables_on(head_dim: int, grid_h: int, grid_w: int, scale: float, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(t.to(device) for t in _tables(head_dim, grid_h, grid_w, scale))


def rotate_pairs(t: torch.Tensor) -> torch.Tensor:
    """(..., hd) with channel pairs (a, b) -> (-b, a)."""
    pairs = t.unflatten(-1, (-1, 2))                                                         # (..., hd/2, 2)
    return torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)                  # (..., hd)


def apply_rope(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``t`` (B, H, N, hd) by tables broadcastable to it, e.g. (1, 1, N, hd) or (B, 1, N, hd)."""
    return t * cos.to(t.dtype) + rotate_pairs(t) * sin.to(t.dtype)
