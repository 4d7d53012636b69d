"""Latent codecs: turn preprocessed uint8 images into model latents and back.

Two codecs share one small interface:

- ``PixelCodec``: the identity, scaled to [-1, 1]. 3 channels, no downsampling. The CPU default.
- ``VAECodec``: a diffusers ``AutoencoderKL`` loaded from a *local* folder (the paper uses the SDXL VAE:
  4 channels, 8x down, scaling 0.13025). Latents are ``(z - shift_factor) * scaling_factor``.

Both expose ``encode(images_uint8 (B,H,W,3), generator=None) -> (B,C,h,w) float32``,
``decode(latents) -> (B,H,W,3) uint8``, ``channels``, ``downsample``, ``latent_size(resolution)``,
``describe()`` and ``config_hash()``. Build one from a string with ``open_codec("pixel")`` or
``open_codec("vae:/path/to/vae")`` (``workbench train-codec`` trains one on your data);
``codec_spec(codec.describe())`` gives back the string that reopens a codec.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import torch

from ..devices import default_device
from ..io import digest
from ..errors import InputError, MissingFileError

VAE_WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.bin.index.json",
)
VAE_EXPECTED = (
    "expected a folder with config.json and diffusion_pytorch_model.safetensors "
    "saved by AutoencoderKL.save_pretrained"
)


# ---------------------------------------------------------------------------------------------
#  Helpers
# ---------------------------------------------------------------------------------------------

def _check_images(images: np.ndarray, downsample: int) -> np.ndarray:
    """Validate a (B, H, W, 3) uint8 batch; return it as a C-contiguous array."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise InputError(
            f"expected uint8 images shaped (B, H, W, 3), got dtype {images.dtype} shape {images.shape}; "
            "add a batch axis with images[None] for a single image"
        )
    h, w = images.shape[1:3]
    if h % downsample or w % downsample:
        raise InputError(
            f"image size {h}x{w} is not divisible by the codec's downsample factor {downsample}; "
            f"resize or crop to a multiple of {downsample}"
        )
    return np.ascontiguousarray(images)


def _to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) in [-1, 1]."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()  # (B, 3, H, W) in [0, 255]
    return x / 127.5 - 1.0  # (B, 3, H, W) in [-1, 1]


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3), clipped and rounded."""
    x = ((x.float() + 1.0) * 127.5).round().clamp(0, 255)  # (B, 3, H, W) in [0, 255]
    return x.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)


class _Codec:
    """Shared behaviour: ``channels``, ``downsample`` and ``latent_size``."""

    kind: str = "?"
    channels: int
    downsample: int

    def latent_size(self, resolution: int) -> int:
        """Latent side length for a square image of ``resolution`` pixels.

        Raises ``ValueError`` naming the resolution when this codec cannot produce it.
        """
        f = self.downsample
        if int(resolution) != resolution or resolution <= 0 or resolution % f:
            lo, hi = max(f, resolution // f * f), (resolution // f + 1) * f
            raise InputError(
                f"resolution {resolution} cannot be produced by the {self.kind} codec: it must be a "
                f"positive multiple of its downsample factor {f} (e.g. {lo} or {hi})"
            )
        return int(resolution) // f

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"


# ---------------------------------------------------------------------------------------------
#  Pixel codec
# ---------------------------------------------------------------------------------------------

class PixelCodec(_Codec):
    """Identity codec: pixels scaled to [-1, 1]; 3 channels, downsample factor 1. The CPU default.

    Example::

        codec = PixelCodec()
        lat = codec.encode(images)          # (B, 3, H, W) float32 in [-1, 1]
        assert (codec.decode(lat) == images).all()
    """

    kind = "pixel"
    channels = 3
    downsample = 1

    def encode(self, images_uint8: np.ndarray, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) in [-1, 1]. ``generator`` is ignored."""
        return _to_unit(_check_images(images_uint8, 1))  # (B, 3, H, W)

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """float (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3). Exact inverse of ``encode``."""
        return _to_uint8(latents.detach())  # (B, H, W, 3)

    def config_hash(self) -> str:
        """Stable hash of this codec's definition (it has no weights)."""
        return digest(b"pixel:[-1,1]:v1")

    def describe(self) -> dict:
        """JSON-able description, stored beside prepared latents."""
        return {
            "kind": "pixel", "path": None, "channels": 3, "downsample": 1,
            "scaling_factor": 1.0, "shift_factor": 0.0, "sample_posterior": False,
            "config_hash": self.config_hash(),
        }


# ---------------------------------------------------------------------------------------------
#  VAE codec
# ---------------------------------------------------------------------------------------------

def hub_hint(path: str | os.PathLike) -> str:
    """For a missing relative ``owner/name`` path (a hub id), a hint to download it first; else ""."""
    p = Path(path).expanduser()
    if not p.exists() and not p.is_absolute() and str(path).count("/") == 1:
        return f"; to use a hub model, download it first: hf download {path} --local-dir DIR"
    return ""


def check_vae_folder(path: str | os.PathLike) -> Path:
    """Return ``path`` as a Path if it holds a saved AutoencoderKL, else raise a clear error."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise MissingFileError(f"VAE path {str(path)!r} is not a folder: {VAE_EXPECTED}{hub_hint(path)}")
    if not (p / "config.json").is_file():
        has_vae = (p / "vae" / "config.json").is_file()  # a diffusers pipeline folder
        sub = f" (it has a vae/ subfolder: did you mean vae:{p / 'vae'}?)" if has_vae else ""
        raise MissingFileError(f"VAE folder {str(p)!r} has no config.json{sub}: {VAE_EXPECTED}")
    if not any((p / name).is_file() for name in VAE_WEIGHT_FILES):
        raise MissingFileError(f"VAE folder {str(p)!r} has no diffusion_pytorch_model weights: {VAE_EXPECTED}")
    return p


class VAECodec(_Codec):
    """diffusers ``AutoencoderKL`` codec loaded from a local folder.

    Latents are ``(z - shift_factor) * scaling_factor`` with both factors read from the VAE config
    (a missing/None shift is 0). ``z`` is a posterior sample (as in the paper) or the posterior mean.

    Args:
        path: folder saved by ``AutoencoderKL.save_pretrained`` (config.json + weights).
        sample_posterior: draw ``z ~ N(mean, std)`` (seed it with ``generator``); False uses the mean.
        batch_size: images per forward pass in ``encode`` / ``decode``.
        device: where the VAE runs; default CUDA when available, else CPU.
        dtype: weight dtype (default float32). On CUDA, encode/decode also run under bf16 autocast.

    Example::

        codec = VAECodec("/models/sdxl-vae")
        lat = codec.encode(images, generator=torch.Generator().manual_seed(0))  # (B, 4, H/8, W/8)
        recon = codec.decode(lat)                                              # (B, H, W, 3) uint8
    """

    kind = "vae"

    def __init__(
        self,
        path: str | os.PathLike,
        sample_posterior: bool = True,  # paper: a posterior sample, not the mean
        batch_size: int = 32,           # images per VAE forward pass
        device: str | torch.device | None = None,  # default: cuda if available else cpu
        dtype: torch.dtype = torch.float32,        # weight dtype
    ):
        from diffusers import AutoencoderKL

        self.path = check_vae_folder(path).resolve()
        self.sample_posterior = bool(sample_posterior)
        self.batch_size = int(batch_size)
        self.device = torch.device(device or default_device())
        self.dtype = dtype
        try:
            vae = AutoencoderKL.from_pretrained(self.path, torch_dtype=dtype)
        except Exception as e:  # wrong class, corrupt weights, ...
            raise InputError(f"could not load an AutoencoderKL from {str(self.path)!r}: {e}; {VAE_EXPECTED}") from e
        self._use(vae.to(self.device))

    @classmethod
    def from_module(cls, vae, sample_posterior: bool = False, batch_size: int = 32) -> VAECodec:
        """A codec over an already loaded ``AutoencoderKL`` (e.g. a diffusers pipeline's ``vae``)."""
        self = cls.__new__(cls)
        self.path, self.sample_posterior, self.batch_size = None, bool(sample_posterior), int(batch_size)
        param = next(vae.parameters())
        self.device, self.dtype = param.device, param.dtype
        self._use(vae)
        return self

    def _use(self, vae) -> None:
        """Take ``vae`` (frozen, eval) and read its scaling, shift, latent channels and downsample factor."""
        self.vae = vae.eval().requires_grad_(False)
        cfg = vae.config
        self.scaling_factor, self.shift_factor = float(cfg.scaling_factor), float(cfg.shift_factor or 0.0)
        self.channels, self.downsample = int(cfg.latent_channels), 2 ** (len(cfg.block_out_channels) - 1)

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def encode(self, images_uint8: np.ndarray, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> float32 latents (B, C, H/f, W/f) on the CPU.

        With ``sample_posterior`` the noise is drawn from ``generator`` (CPU or on the codec's device)
        batch after batch, so the same generator state and batch size give the same latents.
        """
        images = _check_images(images_uint8, self.downsample)
        out = []
        for i in range(0, len(images), self.batch_size):
            x = _to_unit(images[i : i + self.batch_size]).to(self.device, self.dtype)  # (b, 3, H, W)
            with self._autocast():
                dist = self.vae.encode(x).latent_dist
            z = dist.mean.float()  # (b, C, h, w)
            if self.sample_posterior:
                noise_device = generator.device if generator is not None else self.device
                noise = torch.randn(z.shape, generator=generator, device=noise_device)  # (b, C, h, w)
                z = z + dist.std.float() * noise.to(z.device)  # (b, C, h, w)
            out.append(((z - self.shift_factor) * self.scaling_factor).cpu())  # (b, C, h, w)
        if not out:
            h, w = (s // self.downsample for s in images.shape[1:3])
            return torch.empty(0, self.channels, h, w)
        return torch.cat(out)  # (B, C, h, w)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Latents (B, C, h, w) -> uint8 images (B, h*f, w*f, 3)."""
        out = []
        for i in range(0, len(latents), self.batch_size):
            lat = latents[i : i + self.batch_size].to(self.device, torch.float32)  # (b, C, h, w)
            z = lat / self.scaling_factor + self.shift_factor  # (b, C, h, w)
            with self._autocast():
                x = self.vae.decode(z.to(self.dtype)).sample  # (b, 3, H, W) in ~[-1, 1]
            out.append(_to_uint8(x))  # (b, H, W, 3)
        if not out:
            h, w = (s * self.downsample for s in latents.shape[-2:])
            return np.zeros((0, h, w, 3), np.uint8)
        return np.concatenate(out)  # (B, H, W, 3)

    def config_hash(self) -> str:
        """Short sha256 of the VAE's config.json bytes (weights are not hashed)."""
        return digest((self.path / "config.json").read_bytes())

    def describe(self) -> dict:
        """JSON-able description, stored beside prepared latents."""
        return {
            "kind": "vae", "path": str(self.path), "channels": self.channels, "downsample": self.downsample,
            "scaling_factor": self.scaling_factor, "shift_factor": self.shift_factor,
            "sample_posterior": self.sample_posterior, "config_hash": self.config_hash(),
        }


# ---------------------------------------------------------------------------------------------
#  Factory
# ---------------------------------------------------------------------------------------------

CODEC_CHOICES = ("pixel", "vae:PATH")


def codec_spec(description: dict) -> str:
    """The string that reopens a codec from its ``describe()``: ``"pixel"`` or ``"vae:PATH"``."""
    return "pixel" if description["kind"] == "pixel" else f"vae:{description['path']}"


def open_codec(spec: str = "pixel", **kw) -> PixelCodec | VAECodec:
    """Build a codec from a string: ``"pixel"`` or ``"vae:PATH"`` (a local AutoencoderKL folder).

    Keyword arguments go to ``VAECodec`` (``sample_posterior``, ``batch_size``, ``device``, ``dtype``)
    and are ignored by the pixel codec. A bad path raises before any work, naming the path and the fix.

    Example::

        codec = open_codec("pixel")                                  # CPU default
        codec = open_codec("vae:/models/sdxl-vae", sample_posterior=False)
        n = codec.latent_size(256)                                   # 32 for an 8x VAE
    """
    spec = str(spec).strip()
    if spec == "pixel":
        return PixelCodec()
    if spec.startswith("vae:") and spec[4:]:
        return VAECodec(spec[4:], **kw)
    raise InputError(f"unknown codec {spec!r}: choose one of {', '.join(CODEC_CHOICES)}")
