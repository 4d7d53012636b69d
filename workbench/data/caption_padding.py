"""Caption padding that no row of a batch uses, dropped before the model sees it (less work, same output).

The loader trims each training batch on the host, before the transfer to the device, so a training
step reads nothing back from the device for it; sampling trims its caption batch the same way::

    caption, caption_mask = trim_caption_padding(caption, caption_mask)     # (B, 16, D), (B, 16) for short captions
"""

from __future__ import annotations

import torch

CAPTION_LENGTH_MULTIPLE = 16       # trimmed lengths are rounded up to this: few distinct shapes to compile


def trim_caption_padding(caption: torch.Tensor, caption_mask: torch.Tensor | None):
    """Drop the trailing caption positions that no row of the batch uses: ``(caption[:, :L], mask[:, :L])``.

    ``L`` is the longest real caption rounded up to a multiple of ``CAPTION_LENGTH_MULTIPLE`` (at most the
    stored length), so that a compiled model (``Stage.compile``) sees one or two shapes, not one per batch.

    Padding is masked out of every attention and of the pooling, so the model's output is the
    same (up to float rounding); only the work shrinks (77 -> ~10 tokens for short captions).
    Nothing is trimmed without a mask, or when a row has no real token (it attends to all of its
    positions). The null caption of a trimmed batch (``null_caption``) is then shorter too, which
    changes nothing: identical zero tokens give the same attention and pooling at any length.
    Do not use it with ``caption_mask_compat`` (the official code attends to padding).
    """
    if caption_mask is None:
        return caption, caption_mask
    real = caption_mask.bool()                                                        # (B, L)
    if not bool(real.any(dim=1).all()):
        return caption, caption_mask
    used = int(real.any(dim=0).nonzero().max()) + 1
    length = min(caption.shape[1], -(-used // CAPTION_LENGTH_MULTIPLE) * CAPTION_LENGTH_MULTIPLE)
    return caption[:, :length], caption_mask[:, :length]                              # (B, l, D), (B, l)
