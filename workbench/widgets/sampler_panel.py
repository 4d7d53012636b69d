"""SamplerPanel: prompt in, images out, with a live preview of the denoised estimate at every step.

    from workbench.widgets import SamplerPanel
    panel = SamplerPanel("runs/demo/stage4")          # a checkpoint or stage folder (EMA weights)
    panel                                             # shows the widget in a notebook
    panel.prompt.value = "a blue square"
    panel.sampler.value = "edm-stochastic"            # any registered sampler (workbench.diffusion.SAMPLERS)
    panel.options["s_churn"].value = 10.0             # its options appear below the dropdown
    panel.generate(wait=True)                         # what the Generate button does, then waits
    panel.images.shape                                # (batch, H, W, 3) uint8
    panel.save("blue_square.png")                     # what the Save button does

Generation runs ``workbench.diffusion.sample`` on a background thread, so the kernel stays free;
the sampler's per-step callback decodes the denoised estimate into the preview image.
"""

from __future__ import annotations

import html
import re
import threading
import time
from pathlib import Path

import numpy as np
import torch

from ..diffusion import DEFAULT_SAMPLER, SAMPLERS, EDMConfig, get_sampler, sample
from ..images import grid_png, labelled_grid, save_png
from .common import (DisplayMixin, blank_png, check_codec, embed_captions, open_checkpoint, resolve_codec,
                     resolve_text_encoder)
from ..errors import InputError


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:limit] or "sample"


class SamplerPanel(DisplayMixin):
    """Interactive sampling from a MicroDiT or a checkpoint.

    Args:
        model_or_checkpoint: a ``MicroDiT``, or a checkpoint / stage folder (``train.inference.load_for_sampling``;
            its text encoder and codec then default to the ones it records).
        text_encoder: None (the default above, or the embedded MiniLM-L6 for a bare model), a
            ``TextEncoder`` or folder path, or False for all-zero captions.
        codec: None (the checkpoint's codec, or the pixel codec for a bare model), "vae:PATH" or a codec.
        vae: for a checkpoint whose VAE lives elsewhere on this machine, the VAE folder's path here.
        use_ema: load the EMA weights of a checkpoint when it has them.
        resolution: image side in pixels (default: the checkpoint's training resolution, or
            ``model.config.sample_size`` x the codec's downsample).
        edm: EDM constants (default: σ_data of the checkpoint's stage; required with a model).
        prompt, steps, cfg_scale, sampler, seed, batch_size: initial control values (``sampler``: a name in
            ``workbench.diffusion.SAMPLERS``).
        sampler_options: initial values of the sampler's extra options (e.g. ``{"s_churn": 10.0}``).
        out_dir: where Save writes when the path box is left at its default.
        preview_every: decode the denoised estimate into the preview every this many steps.

    Attributes:
        prompt, cfg_scale, steps, sampler, seed, batch_size: the controls; options (option name -> ``FloatText``,
        one per option of any registered sampler, shown while the selected sampler takes it) and sampler_help
        (the selected sampler's description); generate_button, save_button,
        save_path (Text: where Save writes; reset after each generation); preview, grid
        (``ipywidgets.Image``); progress; status; images (uint8 (B, H, W, 3)) and latents of the last run;
        preview_updates (count of preview refreshes in the last run); error (of the last run, or None).
    """

    def __init__(self, model_or_checkpoint, text_encoder=None, codec=None, *, vae: str | Path | None = None,
                 use_ema: bool = True,
                 resolution: int | None = None, edm: EDMConfig | None = None, prompt: str = "a red circle",
                 steps: int = 20, cfg_scale: float = 3.0, sampler: str = DEFAULT_SAMPLER,
                 sampler_options: dict | None = None, seed: int = 0, batch_size: int = 4,
                 out_dir: str | Path = ".", preview_every: int = 1):
        record = {}
        if isinstance(model_or_checkpoint, (str, Path)):
            parts = open_checkpoint(model_or_checkpoint, text_encoder, codec, vae, use_ema)
            model, text_encoder, codec, self.checkpoint = parts.model, parts.text_encoder, parts.codec, parts.checkpoint
            record = {"sigma_data": parts.sigma_data, "resolution": parts.resolution}
        elif edm is None:
            raise InputError("SamplerPanel(model): pass edm=EDMConfig(sigma_data=...), the EDM sigma_data the model "
                             "was trained with (0.5 for the demo's pixel models, 0.9 for the paper's SDXL latents); a "
                             "checkpoint path records it")
        else:
            self.checkpoint = None
            model = model_or_checkpoint
        self.model = model
        self.codec = resolve_codec(codec)
        check_codec(model, self.codec)
        self.text_encoder = resolve_text_encoder(text_encoder, model)
        self.edm = edm or EDMConfig(sigma_data=record["sigma_data"])   # a bare model came with its edm
        resolution = resolution or record.get("resolution")
        self.latent_side = (self.codec.latent_size(resolution) if resolution else model.config.sample_size)
        self.resolution = self.latent_side * getattr(self.codec, "downsample", 1)
        self.out_dir = Path(out_dir)
        self.preview_every = max(1, int(preview_every))
        initial_options = get_sampler(sampler).resolve(sampler_options)   # an unknown name is an error here

        self._build_widgets(prompt, cfg_scale, steps, sampler, initial_options, seed, batch_size)

        self.images: np.ndarray | None = None
        self.last_prompt = ""
        self.latents: torch.Tensor | None = None
        self.preview_updates = 0
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _build_widgets(self, prompt: str, cfg_scale: float, steps: int, sampler: str, initial_options: dict,
                       seed: int, batch_size: int) -> None:
        """The controls, the outputs and their layout (``self.widget``)."""
        import ipywidgets as W

        # ------------------------------------------------------------ controls
        self.prompt = W.Text(value=prompt, description="prompt", layout=W.Layout(width="30em"))
        self.cfg_scale = W.FloatSlider(value=cfg_scale, min=1.0, max=10.0, step=0.5, description="CFG",
                                       readout_format=".1f")
        self.steps = W.IntSlider(value=steps, min=1, max=100, description="steps")
        self.sampler = W.Dropdown(options=list(SAMPLERS), value=sampler, description="sampler")
        self.sampler_help = W.HTML()
        self.options = {}                                 # option name -> FloatText, over every registered sampler
        for entry in SAMPLERS.values():
            for option in entry.options:
                if option.name not in self.options:
                    self.options[option.name] = W.FloatText(value=initial_options.get(option.name, option.default),
                                                            description=option.name, tooltip=option.help,
                                                            layout=W.Layout(width="14em"))
        self.sampler.observe(lambda _change: self._show_sampler(), names="value")
        self._show_sampler()
        self.seed = W.IntText(value=seed, description="seed", layout=W.Layout(width="14em"))
        self.batch_size = W.IntSlider(value=batch_size, min=1, max=16, description="batch")
        self.generate_button = W.Button(description="Generate", button_style="primary", icon="play")
        self.save_button = W.Button(description="Save", icon="save", disabled=True)
        self.save_path = W.Text(value="", placeholder="PNG path (filled in after Generate)", description="path",
                                layout=W.Layout(width="30em"))
        # ------------------------------------------------------------ outputs
        self.progress = W.IntProgress(value=0, min=0, max=steps, description="step")
        self.status = W.HTML()
        self.preview = W.Image(value=blank_png(), format="png")
        self.grid = W.Image(value=blank_png(), format="png")
        self.widget = W.VBox([
            self.prompt,
            W.HBox([self.cfg_scale, self.steps]),
            W.HBox([self.sampler, self.seed, self.batch_size]),
            W.HBox([self.sampler_help, *self.options.values()]),
            W.HBox([self.generate_button, self.progress, self.status]),
            W.HBox([W.VBox([W.HTML("<b>denoised estimate (live)</b>"), self.preview]),
                    W.VBox([W.HTML("<b>samples</b>"), self.grid])]),
            W.HBox([self.save_button, self.save_path]),
        ])
        self.generate_button.on_click(lambda _button: self.generate())
        self.save_button.on_click(self._on_save)

    # ---------------------------------------------------------------- generation
    @property
    def running(self) -> bool:
        """True while a generation runs on its background thread."""
        return self._thread is not None and self._thread.is_alive()

    def _show_sampler(self) -> None:
        """Show the selected sampler's description and only the option boxes it takes."""
        entry = get_sampler(self.sampler.value)
        self.sampler_help.value = f"<small>{html.escape(entry.description)}</small>"
        taken = {option.name for option in entry.options}
        for name, box in self.options.items():
            box.layout.display = None if name in taken else "none"

    def settings(self) -> dict:
        """The current control values, as ``sample`` keywords plus prompt and batch size."""
        entry = get_sampler(self.sampler.value)
        return {"prompt": self.prompt.value, "steps": int(self.steps.value), "cfg_scale": float(self.cfg_scale.value),
                "sampler": entry.name, "sampler_options": {o.name: float(self.options[o.name].value)
                                                           for o in entry.options},
                "seed": int(self.seed.value), "batch_size": int(self.batch_size.value)}

    def generate(self, wait: bool = False, timeout: float | None = None) -> threading.Thread:
        """Start sampling with the current controls on a background thread (the Generate button).

        While one generation runs, another call returns its thread instead of starting a second one.
        With ``wait`` it blocks until the images are ready and re-raises an error of the run.
        """
        with self._lock:
            if not self.running:
                settings = self.settings()
                self.error = None
                self.generate_button.disabled = True
                self.progress.max, self.progress.value = settings["steps"], 0
                self.status.value = "sampling…"
                self._thread = threading.Thread(target=self._run, args=(settings,), name="sampler-panel",
                                                daemon=True)
                self._thread.start()
            thread = self._thread
        if wait:
            self.join(timeout)
        return thread

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the running generation; True when none is running. Re-raises its error."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        if self.error is not None:
            raise self.error
        return not self.running

    def _run(self, settings: dict) -> None:
        start = time.perf_counter()
        self.preview_updates = 0
        steps, batch = settings["steps"], settings["batch_size"]

        def callback(step, sigma, x, denoised):
            self.progress.value = step + 1
            if step % self.preview_every == 0 or step == steps - 1:
                self.preview.value = grid_png(self.codec.decode(denoised.float()))
                self.preview_updates += 1
                self.status.value = f"step {step + 1}/{steps} · σ = {sigma:.3g}"

        try:
            caption, mask = embed_captions(self.text_encoder, [settings["prompt"]], self.model.config.caption_dim)
            caption = caption.expand(batch, -1, -1)                                     # (B, L, D)
            mask = mask.expand(batch, -1) if mask is not None else None                 # (B, L)
            latents = sample(self.model, caption, mask, steps=steps, cfg_scale=settings["cfg_scale"],
                             seed=settings["seed"], sampler=settings["sampler"],
                             sampler_options=settings["sampler_options"], latent_size=self.latent_side,
                             edm=self.edm, callback=callback)                           # (B, C, h, w)
            images = self.codec.decode(latents)                                         # (B, H, W, 3) uint8
            self.latents, self.images, self.last_prompt = latents.cpu(), images, settings["prompt"]
            self.grid.value = grid_png(images)
            self.save_path.value = str((self.out_dir / (f"{_slug(settings['prompt'])}_{settings['sampler']}"
                                                        f"_seed{settings['seed']}.png")).absolute())
            self.save_button.disabled = False
            self.status.value = f"{batch} sample(s) in {time.perf_counter() - start:.1f} s"
        except BaseException as err:     # shown in the panel; join() re-raises it
            self.error = err
            self.status.value = f"<span style='color:#c00'>error: {type(err).__name__}: {html.escape(str(err))}</span>"
        finally:
            self.generate_button.disabled = False

    # ---------------------------------------------------------------- saving
    def save(self, path: str | Path | None = None) -> Path:
        """Write the last grid as a PNG (to ``path``, else the path box); returns the path (the Save button)."""

        if self.images is None:
            raise InputError("nothing to save yet: press Generate (or call generate(wait=True)) first")
        path = Path(path or self.save_path.value or self.out_dir / "samples.png").absolute()
        labels = [self.last_prompt] * len(self.images)
        written = save_png(labelled_grid(self.images, labels), path)
        self.save_path.value = str(written)
        self.status.value = f"saved {html.escape(str(written))}"
        return written

    def _on_save(self, _button=None) -> None:
        try:
            self.save()
        except Exception as err:         # a bad path is shown, not raised into the event loop
            self.status.value = f"<span style='color:#c00'>save failed: {html.escape(str(err))}</span>"
