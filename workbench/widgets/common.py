"""Helpers shared by the widgets: PNG bytes for ``ipywidgets.Image``, image inputs, captions, display.

Nothing here is widget logic of its own: images go through the package's codecs and
``data.images.preprocess``, PNGs and grids through the leaf ``workbench.images``::

    png = png_bytes(images[0], scale=4)          # uint8 (H, W, 3) -> PNG bytes, nearest upscale
    png = grid_png(images)                        # uint8 (N, H, W, 3) -> one PNG grid
    pixels = load_image("cat.jpg", 32)            # path / PIL / array -> uint8 (32, 32, 3)
    caption, mask = embed_captions(encoder, ["a red circle"], caption_dim=384)
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from ..errors import InputError, MissingFileError

# ---------------------------------------------------------------------------------------------
#  Inputs: images, codecs, captions
# ---------------------------------------------------------------------------------------------

def load_image(image, resolution: int) -> np.ndarray:
    """A file path, PIL image or array -> uint8 (resolution, resolution, 3), with the training preprocessing.

    Arrays may be uint8 (H, W, 3) / (H, W), or float in [0, 1]. The short side is resized to
    ``resolution`` (bicubic) and the centre is cropped, as ``workbench.data.images.preprocess`` does.
    """
    from PIL import Image

    from ..data.images import preprocess

    if isinstance(image, (str, os.PathLike)):
        path = Path(image).expanduser()
        if not path.is_file():
            raise MissingFileError(f"image file not found: {str(path)!r}")
        with Image.open(path) as opened:
            opened.load()
            return preprocess(opened, resolution)
    if isinstance(image, Image.Image):
        return preprocess(image, resolution)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    array = np.asarray(image)
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating):
            raise InputError(f"image arrays must be uint8 or float in [0, 1], got dtype {array.dtype}")
        array = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 3, 4)):
        raise InputError(f"image arrays must be shaped (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return preprocess(Image.fromarray(array), resolution)


class CheckpointParts(NamedTuple):
    """What a widget takes from a checkpoint: the model and, unless the caller gave its own, codec and encoder."""

    model: Any
    text_encoder: Any
    codec: Any
    sigma_data: float
    resolution: int
    checkpoint: Any


def open_checkpoint(spec, text_encoder=None, codec=None, vae=None, use_ema: bool = True) -> CheckpointParts:
    """A checkpoint (or stage folder, or "reference") for a widget, via ``load_for_sampling``.

    A text encoder or codec given as an object is kept; given as a path (``"vae:PATH"`` for the codec,
    or ``vae=PATH``) it replaces the recorded one; None takes the checkpoint's own.
    """
    from ..train.inference import load_for_sampling

    vae = vae or (codec[4:] if isinstance(codec, str) and codec.startswith("vae:") else None)
    bundle = load_for_sampling(spec, use_ema=use_ema, device="cpu", vae=vae,
                               text_encoder=text_encoder if isinstance(text_encoder, (str, os.PathLike)) else None)
    keep_encoder = text_encoder is not None and not isinstance(text_encoder, (str, os.PathLike))
    return CheckpointParts(bundle.model, text_encoder if keep_encoder else bundle.text_encoder,
                           codec if codec is not None and not isinstance(codec, str) else bundle.codec,
                           bundle.edm.sigma_data, bundle.resolution, bundle.checkpoint)


def resolve_codec(codec):
    """None / ``"pixel"`` -> the pixel codec; a string -> ``open_codec(spec)``; a codec object as is."""
    from ..data.codecs import open_codec

    if codec is None:
        return open_codec("pixel")
    if isinstance(codec, str):
        return open_codec(codec)
    return codec


def check_codec(model, codec) -> None:
    """Raise ``ValueError`` when the codec's latent channels differ from the model's ``in_channels``."""
    channels = getattr(codec, "channels", None)
    if channels is not None and channels != model.config.in_channels:
        raise InputError(f"the codec makes {channels}-channel latents but the model expects "
                         f"model.config.in_channels={model.config.in_channels}; pass codec= the codec the model "
                         f"was trained with (e.g. open_codec('vae:/path/to/vae'))")


_DEFAULT_ENCODER = None
_DEFAULT_ENCODER_LOCK = threading.Lock()


def default_text_encoder():
    """The embedded MiniLM-L6 text encoder (``open_text_encoder("default")``), loaded once per process."""
    global _DEFAULT_ENCODER
    with _DEFAULT_ENCODER_LOCK:
        if _DEFAULT_ENCODER is None:
            from ..data.text import open_text_encoder

            _DEFAULT_ENCODER = open_text_encoder("default")
        return _DEFAULT_ENCODER


def resolve_text_encoder(text_encoder, model):
    """None -> the embedded default; False -> None (zero captions); a path string -> ``open_text_encoder``.

    Raises ``ValueError`` when the encoder's width differs from ``model.config.caption_dim``.
    """
    if text_encoder is False:
        return None
    if text_encoder is None:
        text_encoder = default_text_encoder()
    elif isinstance(text_encoder, (str, os.PathLike)):
        from ..data.text import open_text_encoder

        text_encoder = open_text_encoder(str(text_encoder))
    dim = getattr(text_encoder, "dim", None)
    if dim is not None and dim != model.config.caption_dim:
        raise InputError(f"the text encoder makes {dim}-d token states but the model expects "
                         f"model.config.caption_dim={model.config.caption_dim}; pass the text encoder the model "
                         f"was trained with, or text_encoder=False for zero captions")
    return text_encoder


def embed_captions(text_encoder, captions: list[str], caption_dim: int,
                   length: int = 77) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Caption token states (B, L, D) and mask (B, L), or all-zero states and no mask without an encoder."""
    if text_encoder is None:
        return torch.zeros(len(captions), length, caption_dim), None
    return text_encoder.encode(list(captions))


# ---------------------------------------------------------------------------------------------
#  Notebook display
# ---------------------------------------------------------------------------------------------

def blank_png(side: int = 128) -> bytes:
    """A light-grey square PNG for an image widget before its first picture (an empty one shows a broken icon)."""
    from ..images import png_bytes

    image = np.full((side, side, 3), 238, dtype=np.uint8)       # (side, side, 3)
    image[[0, -1], :] = image[:, [0, -1]] = 200                 # a thin border
    return png_bytes(image)


class DisplayMixin:
    """Shows ``self.widget`` when the object is the value of a notebook cell."""

    widget = None

    def _repr_mimebundle_(self, include=None, exclude=None, **kwargs):
        return self.widget._repr_mimebundle_(include=include, exclude=exclude, **kwargs)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
