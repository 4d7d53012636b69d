"""Diagnostics: has the model learned *local* attention?

A DiT must learn from its fixed sin-cos positions that neighbouring patches matter; until it does,
each patch decides "object or background" from its own noisy pixels and samples come out as the
right colour in the right place with a speckled outline. ``AttentionRecorder`` measures this on
any unmasked forward pass (a training batch, a denoiser call, a sampler step)::

    from workbench.diffusion import precondition
    with AttentionRecorder(model) as rec:
        precondition(model, x0 + 1.5 * noise, 1.5, caption, caption_mask, sigma_data=0.5)
    for row in rec.locality():
        print(row.name, row.entropy, row.distance, row.uniform_distance)

Per self-attention module (patch-mixer and backbone, not the caption block) and per head:
``entropy`` is the mean attention entropy divided by ``ln T`` (1 = uniform over the T patches),
``distance`` the attention-weighted distance from each query patch to its keys, in patches,
against ``uniform_distance``, the same under uniform attention. A local head has a distance well
below the uniform one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .blocks import Attention
from ..errors import InputError


@dataclass
class AttentionLocality:
    """Locality of one self-attention module, averaged over a batch and the query patches."""

    name: str                # module path, e.g. "blocks.3.attn"
    entropy: list[float]     # per head: mean entropy / ln(T), in [0, 1]; 1 = uniform
    distance: list[float]    # per head: attention-weighted query-key distance, in patches
    uniform_distance: float  # the distance under uniform attention on the same grid


def grid_distances(grid_h: int, grid_w: int) -> torch.Tensor:
    """(T, T) Euclidean distances between the patches of an h x w grid, row-major."""
    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    pos = torch.stack([rows, cols], dim=-1).reshape(-1, 2).float()  # (T, 2)
    return torch.cdist(pos, pos)                                     # (T, T)


def locality_stats(probs: torch.Tensor, grid_h: int, grid_w: int) -> tuple[list[float], list[float], float]:
    """Per-head normalised entropy and mean distance of attention ``probs`` (B, H, T, T) on an h x w grid."""
    t = grid_h * grid_w
    if probs.shape[-2:] != (t, t):
        raise InputError(f"attention over {tuple(probs.shape[-2:])} tokens does not match a {grid_h}x{grid_w} "
                         f"grid of {t} patches; record an unmasked forward (mask_ratio=0)")
    probs = probs.float()
    dist = grid_distances(grid_h, grid_w).to(probs.device)                             # (T, T)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean(dim=(0, 2))        # (H,)
    distance = (probs * dist).sum(-1).mean(dim=(0, 2))                                # (H,)
    norm = math.log(t) if t > 1 else 1.0
    return (entropy / norm).tolist(), distance.tolist(), dist.mean().item()


class AttentionRecorder:
    """Context manager recording the patch self-attention of a ``MicroDiT`` during forward passes.

    Only the last forward inside the ``with`` block is kept. ``locality()`` returns one
    ``AttentionLocality`` per mixer and backbone self-attention module, in model order.
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.grid: tuple[int, int] | None = None
        self.probs: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def __enter__(self) -> AttentionRecorder:
        patch = self.model.arch.patch_size

        def on_model(module, args, kwargs):
            x = args[0] if args else kwargs["x"]
            self.grid = (x.shape[-2] // patch, x.shape[-1] // patch)
            self.probs.clear()

        self._handles.append(self.model.register_forward_pre_hook(on_model, with_kwargs=True))
        for prefix in ("mixer", "blocks"):
            for name, module in getattr(self.model, prefix).named_modules():
                if isinstance(module, Attention) and not module.cross:
                    self._handles.append(module.register_forward_pre_hook(self._recorder(f"{prefix}.{name}"),
                                                                          with_kwargs=True))
        return self

    def _recorder(self, name: str):
        def record(module: Attention, args, kwargs):
            with torch.no_grad():
                self.probs[name] = module.attention_weights(*args, **kwargs).detach().cpu()  # (B, H, T, T)
        return record

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def locality(self) -> list[AttentionLocality]:
        """Entropy and distance per head of every recorded self-attention module."""
        if self.grid is None or not self.probs:
            raise RuntimeError("nothing recorded: run the model inside `with AttentionRecorder(model) as rec:`")
        rows = []
        for name, probs in self.probs.items():
            entropy, distance, uniform = locality_stats(probs, *self.grid)
            rows.append(AttentionLocality(name, [round(e, 4) for e in entropy], [round(d, 4) for d in distance],
                                          round(uniform, 4)))
        return rows
