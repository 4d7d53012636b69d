"""Representation alignment (REPA, Yu et al., ICLR 2025) as an optional training loss.

REPA adds ``repa_weight x (1 - cos(MLP(h_k), f))`` to the diffusion loss: ``h_k`` are the tokens
after backbone block ``repa_depth`` (the kept tokens only, when masking), the MLP is a small
trained projector, and ``f`` are a frozen encoder's features of the *clean* image at the same
grid positions. REPA reports SiT-XL reaching in 400K steps what took 7M without it; VAE-REPA
(2026) gets much of that from a VAE's own features. The frozen encoder must never be the one
that scores samples (the shapes detector), or the score would be gamed.

Encoders (``Stage.repa_encoder``):

- ``"codec"``: the training data's own VAE (``prepare --codec vae:...``). Its decoder's first,
  latent-resolution features (``conv_in`` + ``mid_block``) of the clean latents: free of any
  image decoding, since the latents are what the loader gives.
- ``"vae:PATH"``: any local diffusers ``AutoencoderKL``: its encoder's features
  (``conv_in``, down blocks, ``mid_block``) of the clean images (the pixel codec's latents are the
  images), pooled to the token grid.

It is off by default (``repa_weight: 0``), so the paper's recipe stays exact.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..model.masking import random_keep
from ..errors import InputError


class FeatureTarget(nn.Module):
    """A frozen encoder trunk: clean latents (B, C, H, W) -> features (B, F, H/p, W/p) on the token grid."""

    def __init__(self, vae, side: str, patch_size: int):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        self.side, self.patch_size = side, int(patch_size)
        if side == "decoder":
            self.dim = int(vae.decoder.conv_in.out_channels)
        else:
            self.dim = int(vae.config.block_out_channels[-1])

    @torch.no_grad()
    def forward(self, latents: torch.Tensor, scaling_factor: float = 1.0, shift_factor: float = 0.0) -> torch.Tensor:
        """Features of the clean latents on the (H/p, W/p) token grid."""
        p = self.patch_size
        grid = (latents.shape[-2] // p, latents.shape[-1] // p)
        if self.side == "decoder":
            z = latents / scaling_factor + shift_factor                                  # (B, C, h, w) VAE space
            h = self.vae.decoder.conv_in(z.to(self.vae.dtype))                            # (B, F, h, w)
            h = self.vae.decoder.mid_block(h)                                            # (B, F, h, w)
        else:
            enc = self.vae.encoder
            h = enc.conv_in(latents.to(self.vae.dtype))                                   # images in [-1, 1]
            for block in enc.down_blocks:
                h = block(h)
            h = enc.mid_block(h)                                                         # (B, F, H/f, W/f)
        return F.adaptive_avg_pool2d(h.float(), grid)                                     # (B, F, gh, gw)


class REPA(nn.Module):
    """The projector and the alignment loss; ``attach(model)`` hooks backbone block ``depth``.

    Usage in a training step::

        repa.attach(model)                    # once
        loss = edm_loss(...)                  # the forward fills repa.hidden
        loss = loss + weight * repa.loss(latents, mask_ratio, mask_noise)
    """

    def __init__(self, target: FeatureTarget, width: int, depth: int, scaling_factor: float = 1.0,
                 shift_factor: float = 0.0):
        super().__init__()
        self.target, self.depth = target, int(depth)
        self.scaling_factor, self.shift_factor = float(scaling_factor), float(shift_factor)
        self.projector = nn.Sequential(nn.Linear(width, 2 * width), nn.SiLU(), nn.Linear(2 * width, target.dim))
        self.hidden: torch.Tensor | None = None
        self._handle = None

    def attach(self, model) -> None:
        """Record the output of ``model.blocks[depth - 1]`` on every forward."""
        if not 1 <= self.depth <= len(model.blocks):
            raise InputError(f"Stage.repa_depth: expected 1..{len(model.blocks)} (the backbone's blocks), got "
                             f"{self.depth}")

        def keep_output(_module, _inputs, output):
            self.hidden = output

        self._handle = model.blocks[self.depth - 1].register_forward_hook(keep_output)

    def detach(self) -> None:
        """Remove the forward hook."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def per_sample_loss(self, latents: torch.Tensor, mask_ratio: float,
                        mask_noise: torch.Tensor | None) -> torch.Tensor:
        """(B,) ``1 - cos`` between projected hidden tokens and target features, averaged over the seen tokens."""
        if self.hidden is None:
            raise RuntimeError("REPA.per_sample_loss needs a forward pass of the attached model first")
        target = self.target(latents, self.scaling_factor, self.shift_factor)         # (B, F, gh, gw)
        target = target.flatten(2).transpose(1, 2)                                     # (B, T, F)
        if mask_ratio > 0:
            ids_keep, _, _ = random_keep(target.shape[0], target.shape[1], mask_ratio, device=target.device,
                                         noise=mask_noise)
            target = target.gather(1, ids_keep.unsqueeze(-1).expand(-1, -1, target.shape[-1]))  # (B, K, F)
        pred = self.projector(self.hidden.float())                                     # (B, K, F)
        self.hidden = None
        return 1 - F.cosine_similarity(pred, target, dim=-1).mean(1)                   # (B,)


def build_repa(spec: str, info, model, depth: int) -> REPA:
    """The ``REPA`` module of a stage: ``spec`` is ``"codec"`` or ``"vae:PATH"``; ``info`` the prepared data's info."""
    from diffusers import AutoencoderKL

    from ..data.codecs import check_vae_folder, codec_spec, open_codec

    arch = model.arch
    if spec == "codec":
        if info.codec["kind"] != "vae":
            raise InputError(f"Stage.repa_encoder: 'codec' needs data prepared with a VAE codec, but {info.path} "
                             f"uses the {info.codec['kind']} codec; prepare with --codec vae:PATH (or shapes), or "
                             f"set repa_encoder: vae:PATH")
        codec = open_codec(codec_spec(info.codec), device="cpu")
        target = FeatureTarget(codec.vae, "decoder", arch.patch_size)
        return REPA(target, arch.width, depth, codec.scaling_factor, codec.shift_factor)
    if spec.startswith("vae:"):
        if info.codec["kind"] != "pixel":
            raise InputError(f"Stage.repa_encoder: 'vae:PATH' encodes images, so it needs pixel-codec data; "
                             f"{info.path} holds {info.codec['kind']} latents: use repa_encoder: codec")
        vae = AutoencoderKL.from_pretrained(check_vae_folder(spec[4:]))
        return REPA(FeatureTarget(vae, "encoder", arch.patch_size), arch.width, depth)
    raise InputError(f"Stage.repa_encoder: expected 'codec' or 'vae:PATH', got {spec!r}")
