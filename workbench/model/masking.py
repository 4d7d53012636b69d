"""Deferred random masking: per-sample keep sets, token gather, and mask-token reinsertion.

The backbone of a MicroDiT sees only the kept tokens (a gather, never zeroed tokens), which is
what makes masking cut compute. After the final layer the dropped positions are refilled with a
fixed output-space mask token and the sequence is put back in its original order::

    ids_keep, ids_restore, keep = random_keep(batch=2, tokens=16, mask_ratio=0.75)
    kept = gather_tokens(x, ids_keep)                       # (2, 4, D)
    full = restore_tokens(kept, ids_restore, mask_token)    # (2, 16, D)
"""

from __future__ import annotations

import torch
from ..errors import InputError


def num_kept(tokens: int, mask_ratio: float) -> int:
    """Tokens kept per sample at ``mask_ratio``: ``int(T * (1 - r))``, as in the paper."""
    return int(tokens * (1 - mask_ratio))


def random_keep(batch: int, tokens: int, mask_ratio: float, generator: torch.Generator | None = None,
                device: torch.device | str | None = None,
                noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw an independent random keep set per sample (argsort of uniform noise).

    ``noise`` (B, T) uniform values may be given instead of drawing them (the lowest are kept);
    the trainer uses this to make every sample's mask a function of its own seed. Returns ``ids_keep`` (B, K)
    positions kept (in shuffled order), ``ids_restore`` (B, T) the inverse permutation, and ``keep`` (B, T) bool,
    True where a token is kept.
    """
    k = num_kept(tokens, mask_ratio)
    if noise is None:
        draw_device = generator.device if generator is not None else device
        noise = torch.rand(batch, tokens, generator=generator, device=draw_device)      # (B, T)
    elif noise.shape != (batch, tokens):
        raise InputError(f"mask noise must have shape ({batch}, {tokens}), got {tuple(noise.shape)}")
    noise = noise.to(device)
    ids_shuffle = noise.argsort(dim=1)                                     # (B, T) small noise = keep
    ids_restore = ids_shuffle.argsort(dim=1)                               # (B, T)
    ids_keep = ids_shuffle[:, :k]                                          # (B, K)
    keep = ids_restore < k                                                 # (B, T)
    return ids_keep, ids_restore, keep


def gather_tokens(x: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
    """Select the kept tokens: (B, T, D) -> (B, K, D)."""
    index = ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1])  # (B, K, D)
    return x.gather(1, index)


def restore_tokens(x_kept: torch.Tensor, ids_restore: torch.Tensor, mask_token: torch.Tensor) -> torch.Tensor:
    """Append mask tokens for the dropped positions and unshuffle: (B, K, D) -> (B, T, D)."""
    b, k, d = x_kept.shape
    t = ids_restore.shape[1]
    fill = mask_token.to(x_kept.dtype).expand(b, t - k, d)            # (B, T-K, D)
    x = torch.cat([x_kept, fill], dim=1)                               # (B, T, D) shuffled order
    return x.gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, d))   # (B, T, D) original order
