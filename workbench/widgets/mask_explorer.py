"""MaskExplorer: see deferred patch masking on one image: kept and dropped patches, the noisy input, and
the model's denoised prediction with and without masking.

    from workbench import MicroDiT
    from workbench.widgets import MaskExplorer
    model = MicroDiT.from_preset("nano")
    explorer = MaskExplorer(model)                    # a shapes scene at the model's resolution
    explorer                                          # shows the widget in a notebook
    explorer.mask_ratio.value = 0.5                   # the outputs update
    explorer.keep.sum()                               # int(T * (1 - 0.5)) kept patches

The masked prediction is exactly what training computes: ``precondition(model, x, σ, caption,
sigma_data=σ_data, mask_ratio=r, generator=seeded)``. The backbone sees only the kept patches; at dropped positions the
network output is the mask token, so there the denoiser returns (almost) only c_skip·x.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from ..diffusion.edm import precondition
from ..diffusion.sampling import model_device
from ..images import display_scale, png_bytes, upscale
from ..model.masking import num_kept
from .common import (DisplayMixin, check_codec, embed_captions, load_image, open_checkpoint, resolve_codec,
                     resolve_text_encoder)
from ..errors import InputError

SIGMA_RANGE = (0.002, 80.0)      # the log slider's σ range (EDM's σ_min .. σ_max)
DROPPED_GREY = 150.0             # grey level dropped patches are blended towards
HATCH_EVERY = 4                  # display pixels between the hatch lines of a dropped patch


def patch_grid_image(image: np.ndarray, keep: np.ndarray, patch_px: int, scale: int = 1) -> np.ndarray:
    """The image with dropped patches greyed and hatched, and thin patch borders.

    Args:
        image: uint8 (H, W, 3).
        keep: (T,) bool, True where the patch is kept, patches in row-major order.
        patch_px: side of one patch in image pixels (patch_size x the codec's downsample factor).
        scale: nearest-neighbour upscale of the result (hatching needs a few pixels per patch).

    Returns:
        uint8 (H*scale, W*scale, 3).
    """
    h, w = image.shape[:2]
    gh, gw = h // patch_px, w // patch_px
    keep = np.asarray(keep, dtype=bool).reshape(gh, gw)                          # (gh, gw)
    big = upscale(image, scale).astype(np.float32)                               # (H*s, W*s, 3)
    side = patch_px * scale
    kept_px = keep.repeat(side, 0).repeat(side, 1)                               # (H*s, W*s)
    yy, xx = np.mgrid[:big.shape[0], :big.shape[1]]                              # (H*s, W*s) each
    hatch = (yy + xx) % HATCH_EVERY == 0
    dropped = big * 0.3 + DROPPED_GREY * 0.7
    dropped[hatch] = 90.0
    out = np.where(kept_px[..., None], big, dropped)                             # (H*s, W*s, 3)
    if side >= 4:                                                                # patch borders
        border = (yy % side == 0) | (xx % side == 0)
        out[border] = out[border] * 0.5 + 255 * 0.5
    return out.round().clip(0, 255).astype(np.uint8)


class MaskExplorer(DisplayMixin):
    """Explore MicroDiT's deferred masking on one image.

    Args:
        model: a ``MicroDiT`` (any in_channels; for latent models pass their ``codec``), or a checkpoint /
            stage folder / ``"reference"``, whose codec, text encoder, σ_data and resolution are then the
            defaults (e.g. a model converted with ``workbench convert-official``).
        image: None (render a shapes scene at the model's resolution), a file path, a PIL image or an
            array (resized and centre-cropped to the resolution).
        text_encoder: None (the embedded MiniLM-L6), a ``TextEncoder`` or a folder path, or False for
            all-zero caption states.
        caption: the caption to condition on (default: the shapes scene's caption, or "").
        codec: None / "pixel" (in_channels == 3, pixels in [-1, 1]), "vae:PATH" or a codec object.
        resolution: image side in pixels (default ``model.config.sample_size`` x the codec's downsample).
        mask_ratio, sigma, seed: initial control values (the seed draws both the noise and the mask).
        sigma_data: the EDM σ_data the model was trained with (default: the checkpoint's; required with a model).
        scene: index of the shapes scene (``split="val"``) when no image is given.

    Attributes:
        mask_ratio, sigma, seed, caption_text: the controls (``ipywidgets``; set ``.value`` to update).
        image_view, patch_view, noisy_view, unmasked_view, masked_view: ``ipywidgets.Image`` outputs.
        keep: (T,) bool numpy array of the kept patches; ``num_tokens``; ``num_kept``.
        noisy, denoised_unmasked, denoised_masked: (1, C, h, w) float tensors of the last update.
        widget: the ``ipywidgets.VBox`` shown in notebooks.
        checkpoint: the checkpoint folder the model came from, or None.

    Example::

        explorer = MaskExplorer(model, "photo.jpg", caption="a cat", codec="vae:/models/sdxl-vae")
        explorer = MaskExplorer("models/xl2", "photo.jpg", caption="a cat")   # a checkpoint: its codec and encoder
        explorer.sigma.value = 2.0
        explorer.update()
    """

    def __init__(self, model, image=None, text_encoder=None, caption: str | None = None, *, codec=None,
                 resolution: int | None = None, mask_ratio: float = 0.75, sigma: float = 1.0, seed: int = 0,
                 sigma_data: float | None = None, scene: int = 0):
        self.checkpoint = None
        if isinstance(model, (str, os.PathLike)):
            parts = open_checkpoint(model, text_encoder, codec)
            model, text_encoder, codec, self.checkpoint = parts.model, parts.text_encoder, parts.codec, parts.checkpoint
            sigma_data = parts.sigma_data if sigma_data is None else sigma_data
            resolution = resolution or parts.resolution
        self.model = model
        self.codec = resolve_codec(codec)
        check_codec(model, self.codec)
        self.text_encoder = resolve_text_encoder(text_encoder, model)
        if sigma_data is None:
            raise InputError("MaskExplorer(model): pass sigma_data=..., the EDM sigma_data the model was trained with "
                             "(0.5 for the demo's pixel models, 0.9 for the paper's SDXL latents); a checkpoint path "
                             "records it")
        self.sigma_data = float(sigma_data)
        self.device = model_device(model)
        down = getattr(self.codec, "downsample", 1)
        self.resolution = int(resolution or model.config.sample_size * down)
        self.patch_px = model.config.patch_size * down
        if self.resolution % self.patch_px:
            raise InputError(f"resolution {self.resolution} is not a multiple of the patch side in pixels "
                             f"({model.config.patch_size} x downsample {down} = {self.patch_px})")

        caption = self._load_image(image, caption, scene)
        self._build_widgets(mask_ratio, sigma, seed, caption)
        self._embed(caption)
        self.mask_ratio.observe(self._on_change, names="value")
        self.sigma.observe(self._on_change, names="value")
        self.seed.observe(self._on_change, names="value")
        self.caption_text.observe(self._on_caption, names="value")
        self.update()

    def _load_image(self, image, caption: str | None, scene: int) -> str:
        """The image (a validation scene when None) in pixels and latents; returns the caption to show."""
        if image is None:
            from ..data.shapes import shapes_arrays

            images, scenes = shapes_arrays(1, resolution=self.resolution, split="val", start=scene)
            self.pixels = images[0]                                              # (R, R, 3) uint8
            caption = scenes[0].caption if caption is None else caption
        else:
            self.pixels = load_image(image, self.resolution)                     # (R, R, 3) uint8
            caption = "" if caption is None else caption
        self.x0 = self.codec.encode(self.pixels[None]).float().to(self.device)   # (1, C, h, w)
        p = self.model.config.patch_size
        self.num_tokens = (self.x0.shape[-2] // p) * (self.x0.shape[-1] // p)                # T
        self.scale = display_scale(self.resolution)
        return caption

    def _build_widgets(self, mask_ratio: float, sigma: float, seed: int, caption: str) -> None:
        """The sliders, the caption box and the five image panels (``self.widget``)."""
        import ipywidgets as W

        # ------------------------------------------------------------ controls
        lo, hi = (math.log10(s) for s in SIGMA_RANGE)
        self.mask_ratio = W.FloatSlider(value=mask_ratio, min=0.0, max=0.95, step=0.05, description="mask ratio",
                                        continuous_update=False, readout_format=".2f")
        self.sigma = W.FloatLogSlider(value=sigma, base=10, min=lo, max=hi, step=0.05, description="σ",
                                      continuous_update=False, readout_format=".3g")
        self.seed = W.IntText(value=seed, description="seed")
        self.caption_text = W.Text(value=caption, description="caption", continuous_update=False,
                                   disabled=self.text_encoder is None,
                                   layout=W.Layout(width="28em"))
        # ------------------------------------------------------------ outputs
        side = max(128, self.resolution * self.scale)                     # px on screen
        image_layout = W.Layout(width=f"{side}px", height=f"{side}px", overflow="hidden", margin="0")
        panel_layout = W.Layout(width=f"{side + 8}px", overflow="hidden")   # no scrollbar under each image
        self.image_view, self.patch_view, self.noisy_view, self.unmasked_view, self.masked_view = (
            W.Image(format="png", layout=image_layout) for _ in range(5))
        self.image_view.value = png_bytes(self.pixels, self.scale)
        self.info = W.HTML()
        panels = [(self.image_view, "image"), (self.patch_view, "kept / dropped patches"),
                  (self.noisy_view, "noisy input x₀ + σn"), (self.unmasked_view, "denoised, no masking"),
                  (self.masked_view, "denoised, masked")]
        self.widget = W.VBox([
            W.HBox([self.mask_ratio, self.sigma, self.seed]),
            self.caption_text,
            W.HBox([W.VBox([W.HTML(f"<div style='text-align:center;line-height:1.25;height:2.6em'><b>{title}</b>"
                                   f"</div>"), view], layout=panel_layout)
                    for view, title in panels], layout=W.Layout(flex_flow="row wrap", overflow="visible")),
            self.info,
        ])

    # ---------------------------------------------------------------- callbacks
    def _embed(self, caption: str) -> None:
        states, mask = embed_captions(self.text_encoder, [caption], self.model.config.caption_dim)
        self.caption_states = states.to(self.device)                             # (1, L, D)
        self.caption_mask = mask.to(self.device) if mask is not None else None   # (1, L) or None

    def _on_change(self, _change=None) -> None:
        self.update()

    def _on_caption(self, change) -> None:
        self._embed(change["new"])
        self.update()

    # ---------------------------------------------------------------- the computation
    @torch.no_grad()
    def _decode(self, latents: torch.Tensor) -> np.ndarray:
        return self.codec.decode(latents.float())[0]                     # (H, W, 3) uint8

    def _error(self, denoised: torch.Tensor) -> float:
        return float(((denoised - self.x0) ** 2).mean())

    def errors(self) -> dict:
        """Mean squared error to the clean image at the current settings: every pixel unmasked, and the kept
        patches unmasked and masked (what the backbone saw; with a patch-mixer the kept tokens also carry what
        the mixer spread from the dropped ones).

        No error is given over the dropped patches: there the network outputs its learnt mask token, so the
        prediction is the skip connection ``c_skip·x`` plus a constant, the same whatever the backbone or mixer
        learnt about the image, and a dropped-patch MSE measures almost nothing about either.
        """
        p = self.model.config.patch_size                                          # latent pixels per patch side
        h, w = self.x0.shape[-2] // p, self.x0.shape[-1] // p
        keep = torch.as_tensor(self.keep).reshape(h, w)
        keep_px = keep.repeat_interleave(p, 0).repeat_interleave(p, 1).to(self.x0.device)       # (h·p, w·p)
        unmasked = ((self.denoised_unmasked.float() - self.x0) ** 2).mean(dim=(0, 1))          # (h·p, w·p)
        masked = ((self.denoised_masked.float() - self.x0) ** 2).mean(dim=(0, 1))              # (h·p, w·p)
        return {"mask_ratio": float(self.mask_ratio.value), "sigma": float(self.sigma.value),
                "seed": int(self.seed.value), "kept_patches": self.num_kept, "patches": self.num_tokens,
                "mse_unmasked": float(unmasked.mean()), "mse_unmasked_kept": float(unmasked[keep_px].mean()),
                "mse_masked_kept": float(masked[keep_px].mean())}

    @torch.no_grad()
    def update(self) -> None:
        """Recompute the noisy input, the keep mask and both predictions from the controls."""
        ratio, sigma, seed = float(self.mask_ratio.value), float(self.sigma.value), int(self.seed.value)
        noise = torch.randn(self.x0.shape, generator=torch.Generator().manual_seed(seed))   # (1, C, h, w)
        self.noisy = self.x0 + sigma * noise.to(self.device)                                 # (1, C, h, w)
        was_training = self.model.training
        self.model.eval()
        try:
            args = (self.model, self.noisy, sigma, self.caption_states, self.caption_mask)
            self.denoised_unmasked, _ = precondition(*args, sigma_data=self.sigma_data)
            self.denoised_masked, keep = precondition(*args, mask_ratio=ratio, sigma_data=self.sigma_data,
                                                      generator=torch.Generator().manual_seed(seed))
        finally:
            self.model.train(was_training)
        if keep is None:                                                          # mask_ratio == 0
            keep = torch.ones(1, self.num_tokens, dtype=torch.bool)
        self.keep = keep[0].cpu().numpy()                                         # (T,)
        self.num_kept = int(self.keep.sum())

        self.patch_view.value = png_bytes(patch_grid_image(self.pixels, self.keep, self.patch_px, self.scale))
        self.noisy_view.value = png_bytes(self._decode(self.noisy), self.scale)
        self.unmasked_view.value = png_bytes(self._decode(self.denoised_unmasked), self.scale)
        self.masked_view.value = png_bytes(self._decode(self.denoised_masked), self.scale)
        self.info.value = (
            f"kept <b>{self.num_kept}</b> of {self.num_tokens} patches (mask ratio {ratio:.2f}: the backbone sees "
            f"int(T·(1−r)) = {num_kept(self.num_tokens, ratio)} tokens) · σ = {sigma:.3g} · "
            f"MSE to the clean image: unmasked {self._error(self.denoised_unmasked):.4f}, "
            f"masked {self._error(self.denoised_masked):.4f}")


class MaskComparison(DisplayMixin):
    """Several ``MaskExplorer``s driven by one set of sliders, with a table of their errors that follows them.

    The first explorer's mask ratio, σ and seed are linked to every other's, so all models see the same image,
    noise and mask; the table (``MaskExplorer.errors`` per model) is recomputed on every change::

        comparison = MaskComparison({"with mixer": explorer_a, "without mixer": explorer_b})
        comparison                      # the table; move explorer_a's sliders and it updates
        comparison.rows()               # the same numbers as dicts
    """

    def __init__(self, explorers: dict[str, MaskExplorer]):
        import ipywidgets as W
        import traitlets

        if len(explorers) < 2:
            raise InputError("MaskComparison needs at least two explorers, e.g. {'with mixer': a, 'without': b}")
        self.explorers = dict(explorers)
        first, *others = self.explorers.values()
        self._links = [traitlets.link((getattr(first, name), "value"), (getattr(other, name), "value"))
                       for other in others for name in ("mask_ratio", "sigma", "seed")]
        self.widget = W.HTML()
        for explorer in self.explorers.values():
            for name in ("mask_ratio", "sigma", "seed", "caption_text"):
                getattr(explorer, name).observe(self._refresh, names="value")
        self._refresh()

    def rows(self) -> list[dict]:
        """One dict per model: its name and ``MaskExplorer.errors()``."""
        return [{"model": name, **explorer.errors()} for name, explorer in self.explorers.items()]

    def _refresh(self, _change=None) -> None:
        from ..report import table_html

        self.widget.value = (table_html(self.rows()) + "<p style='font-size:90%'>Follows the sliders of the first "
                             "explorer (linked to the others). The dropped patches have no column: there every "
                             "model outputs its mask token, see <code>MaskExplorer.errors</code>.</p>")
