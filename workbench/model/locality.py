"""Locality levers for small images, each off by default (the paper's presets use none of them).

At 16-32 px a 2 x 2 patch decides "object or background" from its own noisy pixels, and a tiny
backbone's attention stays nearly uniform. These give the model locality:

- ``ConvStem``: two 5 x 5 convolutions with GroupNorm before patchify, so a patch token sees its
  neighbourhood (as minRF's DiT does). ``MicroDiTConfig.conv_stem`` = its channels.
- ``LongSkips``: U-ViT's long skips (Bao et al. 2023): the output of backbone block i is joined
  to the input of block depth-1-i by concatenation and a Linear layer. ``MicroDiTConfig.long_skips``.
- ``OutputConv``: a 3 x 3 convolution after unpatchify against patch artefacts (U-ViT's
  ``conv=True``), residual and zero-initialised. ``MicroDiTConfig.output_conv``.

Each starts as the identity of the plain model's path (skips and output conv are zero-initialised
on their new inputs), so switching one on changes what can be learnt, not the starting point.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def _groups(channels: int) -> int:
    """GroupNorm groups: 8 when they divide the channels, else 1."""
    return 8 if channels % 8 == 0 else 1


class ConvStem(nn.Module):
    """(B, C, H, W) -> (B, channels, H, W): conv5x5 -> GroupNorm -> SiLU, twice (same resolution)."""

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, channels, 5, padding=2), nn.GroupNorm(_groups(channels), channels), nn.SiLU(),
            nn.Conv2d(channels, channels, 5, padding=2), nn.GroupNorm(_groups(channels), channels), nn.SiLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)                                                   # (B, channels, H, W)

    @staticmethod
    def flops(in_channels: int, channels: int, side: int) -> int:
        """Forward FLOPs on a ``side`` x ``side`` input (2 per multiply-add)."""
        return 2 * side * side * 25 * channels * (in_channels + channels)


class LongSkips(nn.Module):
    """U-ViT long skips over ``depth`` blocks: block i (i < depth // 2) feeds block depth-1-i.

    Usage inside a backbone loop::

        skips = []
        for i, block in enumerate(blocks):
            tokens = long_skips.join(i, tokens, skips)     # concat + Linear where block i receives a skip
            tokens = block(tokens, ...)
            long_skips.push(i, tokens, skips)
    """

    def __init__(self, depth: int, width: int):
        super().__init__()
        self.depth = depth
        self.joins = nn.ModuleList(nn.Linear(2 * width, width, bias=True) for _ in range(depth // 2))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Start as "ignore the skip": each join's weight is [I | 0], its bias 0."""
        with torch.no_grad():
            for linear in self.joins:
                width = linear.out_features
                linear.weight.zero_()
                linear.weight[:, :width].copy_(torch.eye(width))
                linear.bias.zero_()

    def push(self, i: int, tokens: torch.Tensor, skips: list) -> None:
        """Keep block i's output when it is the source of a skip."""
        if i < self.depth // 2:
            skips.append(tokens)

    def join(self, i: int, tokens: torch.Tensor, skips: list) -> torch.Tensor:
        """Block i's input joined with the skip it receives (unchanged for the first half and a middle block)."""
        if i < self.depth - self.depth // 2:
            return tokens
        linear = self.joins[self.depth - 1 - i]
        return linear(torch.cat([tokens, skips.pop()], dim=-1))                # (B, K, D)

    @staticmethod
    def flops(depth: int, width: int, tokens: int) -> int:
        """Forward FLOPs of every join for ``tokens`` tokens."""
        return (depth // 2) * 2 * tokens * 2 * width * width


class OutputConv(nn.Module):
    """x + conv3x3(x) on the unpatchified output (B, C, H, W); zero-initialised, so it starts as the identity."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zero weights and bias: the identity."""
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)                                                 # (B, C, H, W)

    @staticmethod
    def flops(channels: int, side: int) -> int:
        """Forward FLOPs on a ``side`` x ``side`` output."""
        return 2 * side * side * 9 * channels * channels
