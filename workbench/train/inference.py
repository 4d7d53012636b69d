"""One way to load a trained model for sampling: ``load_for_sampling(path)``.

It returns the model (EMA weights when present), the latent codec, the text encoder, the EDM
constants, the pixel resolution and the default prompts, and is what the CLI, the eval code, the
report and the widgets use. A checkpoint records everything sampling needs in its ``config.json``
(``"sampling"``: codec and text-encoder specs, σ_data, resolution, prompts, CFG scale), so it
samples from any working directory without the training data. Older checkpoints without that
record fall back to the prepared dataset they were trained on.

    bundle = load_for_sampling("runs/demo/stage4")            # newest checkpoint, EMA weights
    images = bundle.sample(["a red circle"], steps=30)         # (1, 64, 64, 3) uint8
    sample_checkpoint("runs/demo/stage4", ["a red circle"], out="grid.png")
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..devices import default_device
from ..diffusion import DEFAULT_SAMPLER, EDMConfig, sample
from ..io import digest
from ..model import MicroDiT
from . import checkpoint as ckpt
from ..errors import InputError, MissingFileError


def sampling_record(info, stage) -> dict:
    """What a checkpoint of ``stage`` (trained on prepared data ``info``) needs for sampling anywhere."""
    from ..data.codecs import codec_spec
    from ..data.text import text_spec

    text = info.text_encoder
    return {"codec": codec_spec(info.codec), "codec_description": info.codec,
            "text_encoder": {"spec": text_spec(text), "max_length": text["max_length"],
                             "trim_padding": text.get("trim_padding", False), "dim": text.get("dim"),
                             "config_hash": text.get("config_hash")},
            "resolution": stage.resolution, "sigma_data": stage.sigma_data,
            "prompts": list(stage.sample_prompts), "cfg_scale": stage.sample_cfg_scale, "steps": stage.sample_steps,
            "data": {"path": str(info.path), "fingerprint": info.fingerprint}}   # a resume refuses other data


def _record_from_prepared(path: Path, stage: dict) -> dict:
    """The sampling record of a checkpoint saved before checkpoints carried one: from its prepared data."""
    from ..data.codecs import codec_spec
    from ..data.prepared_format import PreparedInfo
    from ..data.text import text_spec

    if "data" not in stage:
        raise InputError(f"{path} records neither a sampling record nor its training data, so its text encoder "
                         "and codec are unknown")
    try:
        info = PreparedInfo.read(stage["data"])
    except FileNotFoundError as err:
        raise MissingFileError(f"{path} predates self-contained checkpoints and was trained on {stage['data']!r}, "
                                f"which is needed for its text encoder and codec but is missing; run from the "
                                f"folder the training ran in") from err
    text = info.text_encoder
    return {"codec": codec_spec(info.codec), "text_encoder": {"spec": text_spec(text), "max_length": text["max_length"],
                                                              "trim_padding": text.get("trim_padding", False)},
            "resolution": stage.get("resolution"), "sigma_data": stage.get("sigma_data", 0.9),
            "prompts": list(stage.get("sample_prompts") or []), "cfg_scale": stage.get("sample_cfg_scale", 5.0),
            "steps": stage.get("sample_steps", 30)}


def _resolve_relative(spec: str, base: Path) -> str:
    """A ``vae:`` codec or text-encoder path relative to the checkpoint folder, made absolute when it exists there."""
    prefix = "vae:" if spec.startswith("vae:") else ""
    raw = spec[len(prefix):]
    if raw and not Path(raw).is_absolute() and (base / raw).exists():
        return prefix + str((base / raw).resolve())
    return spec


@dataclass
class SamplingBundle:
    """A model ready to sample, with what it needs: codec, text encoder, EDM constants, resolution.

    ``sample(prompts, ...)`` returns uint8 images (N, H, W, 3). Built by ``load_for_sampling``.
    """

    model: MicroDiT
    codec: Any
    text_encoder: Any
    edm: EDMConfig
    resolution: int                     # pixels
    checkpoint: Path | None
    ema: bool
    default_prompts: list[str] = field(default_factory=list)
    default_cfg_scale: float = 5.0
    default_steps: int = 30
    weights_hash: str | None = None

    @property
    def device(self) -> torch.device:
        """Where the model's weights are."""
        return next(self.model.parameters()).device

    @property
    def latent_size(self) -> int:
        """The latent side that decodes to ``resolution`` pixels."""
        return self.codec.latent_size(self.resolution)

    def encode_prompts(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Caption token states (N, L, D) and mask (N, L), exactly as at prepare time."""
        return self.text_encoder.encode(list(prompts))

    def sample_latents(self, prompts: Sequence[str], steps: int | None = None, cfg_scale: float | None = None,
                       seed: int = 0, sampler: str = DEFAULT_SAMPLER, seeds: Sequence[int] | None = None,
                       callback=None, sampler_options: dict | None = None) -> torch.Tensor:
        """Latents (N, C, h, w) for ``prompts``; ``seeds`` gives each sample its own initial noise.

        ``sampler_options`` are the sampler's extras (e.g. ``{"s_churn": 10.0}`` for "edm-stochastic").
        """
        caption, mask = self.encode_prompts(prompts)
        side = self.latent_size
        noise = None
        if seeds is not None:
            if len(seeds) != len(prompts):
                raise InputError(f"seeds: expected one per prompt ({len(prompts)}), got {len(seeds)}")
            noise = torch.stack([torch.randn(self.model.arch.in_channels, side, side,
                                             generator=torch.Generator().manual_seed(int(s))) for s in seeds])
        return sample(self.model, caption, mask, steps=steps or self.default_steps,
                      cfg_scale=self.default_cfg_scale if cfg_scale is None else cfg_scale, seed=seed,
                      sampler=sampler, sampler_options=sampler_options, latent_size=side, edm=self.edm,
                      callback=callback, noise=noise)

    def sample(self, prompts: Sequence[str], steps: int | None = None, cfg_scale: float | None = None, seed: int = 0,
               sampler: str = DEFAULT_SAMPLER, seeds: Sequence[int] | None = None, callback=None,
               sampler_options: dict | None = None) -> np.ndarray:
        """uint8 images (N, H, W, 3) for ``prompts`` (see ``sample_latents``)."""
        return self.codec.decode(self.sample_latents(prompts, steps, cfg_scale, seed, sampler, seeds, callback,
                                                     sampler_options))


def weights_sha256(path: Path, ema: bool) -> str:
    """Short sha256 of the weights file a bundle was loaded from (recorded in evaluation protocols)."""
    return digest((path / (ckpt.EMA_FILE if ema else ckpt.MODEL_FILE)).read_bytes())


REFERENCE_DIR = Path(__file__).resolve().parents[1] / "assets" / "reference"   # the shipped trained model
SHIPPED_MODELS = {"reference": REFERENCE_DIR}


def export_for_sampling(spec: str | Path, out: str | Path, use_ema: bool = True, half: bool = True,
                        extra: dict | None = None) -> Path:
    """A slim, self-contained copy of a checkpoint for sampling only: its (EMA) weights as the model, fp16 by
    default, the config and sampling record, a checksum manifest; no optimizer. Returns the new folder.

    ``out`` receives one ``step_NNNNNNN`` folder (replacing an older export); ``extra`` goes into its
    training state (e.g. the scores and the command that made it). This is how the shipped reference
    model is made::

        export_for_sampling("runs/ablate/narrow-cooldown-200T/runs/scale-narrow_cooldown-s0/main",
                            "workbench/assets/reference", extra={"scores": ...})
    """
    import shutil

    path = ckpt.resolve_checkpoint(spec)
    config = ckpt.read_config(path)
    ema = use_ema and ckpt.has_ema(path)
    model = ckpt.load_model(path, ema=ema)
    if half:
        model = model.half()
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    state = ckpt.TrainingState(step=ckpt.read_manifest(path)["step"], extra={"exported_from": str(path), "ema": ema,
                                                                              **(extra or {})})
    sampling = config.get("sampling") or _record_from_prepared(path, config.get("stage") or {})
    return ckpt.save_checkpoint(out, state.step, model=model, state=state, stage_config=config.get("stage"),
                                sampling=sampling, final=True)


def load_for_sampling(spec: str | Path, use_ema: bool = True, device: str | torch.device | None = None,
                      vae: str | None = None, text_encoder: str | None = None) -> SamplingBundle:
    """Load a checkpoint (or a stage folder's newest one) with its codec and text encoder, ready to sample.

    Args:
        spec: a ``step_NNNNNNN`` checkpoint folder, a stage folder, or ``"reference"``: the trained
            model that ships with the package (docs/demo.md says how it was made and what it scores).
        use_ema: sample the EMA weights when the checkpoint has them.
        device: where to sample (default: the GPU when torch sees one, else the CPU).
        vae: a local AutoencoderKL folder, overriding the recorded codec (a checkpoint from another machine).
        text_encoder: a local text-encoder folder (or ``"default"``), overriding the recorded one.

    Example::

        bundle = load_for_sampling("runs/demo/stage4")
        bundle.sample(["a red circle", "two blue squares"], cfg_scale=3.0)   # (2, 64, 64, 3) uint8
    """
    from ..data.codecs import open_codec
    from ..data.text import open_text_encoder

    if str(spec) in SHIPPED_MODELS and not Path(spec).exists():
        spec = SHIPPED_MODELS[str(spec)]
        if not ckpt.list_checkpoints(spec):
            raise MissingFileError(f"the shipped reference model is missing from {spec}; reinstall the package")
    path = ckpt.resolve_checkpoint(spec)
    config = ckpt.read_config(path)
    stage = config.get("stage") or {}
    record = config.get("sampling") or _record_from_prepared(path, stage)
    codec_spec = f"vae:{vae}" if vae else _resolve_relative(record["codec"], path)
    text = record["text_encoder"]
    text_path = text_encoder or _resolve_relative(text["spec"], path)
    try:
        codec = open_codec(codec_spec)
    except FileNotFoundError as err:
        raise MissingFileError(f"{err}. This checkpoint's codec is missing here: pass its folder, e.g. "
                                f"load_for_sampling(path, vae='/models/vae') or SamplerPanel(path, vae='...')") from err
    try:
        encoder = open_text_encoder(text_path, max_length=text["max_length"], trim_padding=text["trim_padding"])
    except FileNotFoundError as err:
        raise MissingFileError(f"{err}. This checkpoint's text encoder is missing here: pass its folder with "
                                f"text_encoder='/models/text-encoder'") from err
    ema = use_ema and ckpt.has_ema(path)
    model = ckpt.load_model(path, ema=ema).to(device or default_device())   # an export's fp16 weights into fp32
    resolution = record.get("resolution") or model.arch.sample_size * codec.downsample
    return SamplingBundle(model=model, codec=codec, text_encoder=encoder,
                          edm=EDMConfig(sigma_data=record["sigma_data"]), resolution=int(resolution),
                          checkpoint=path, ema=ema,
                          default_prompts=list(record.get("prompts") or []),
                          default_cfg_scale=float(record.get("cfg_scale", 5.0)),
                          default_steps=int(record.get("steps", 30)), weights_hash=weights_sha256(path, ema))


def bundle_for_trainer(trainer) -> SamplingBundle:
    """A ``SamplingBundle`` around a running trainer's sampling model (EMA when kept), for scores during training."""
    from ..data.prepared_format import open_prepared_codec, open_prepared_text_encoder

    stage = trainer.stage
    return SamplingBundle(model=trainer.sampling_model(), codec=open_prepared_codec(trainer.info),
                          text_encoder=open_prepared_text_encoder(trainer.info), edm=trainer.edm,
                          resolution=stage.resolution, checkpoint=None, ema=trainer.ema is not None,
                          default_prompts=list(stage.sample_prompts), default_cfg_scale=stage.sample_cfg_scale,
                          default_steps=stage.sample_steps)


def sample_checkpoint(spec: str | Path, prompts: list[str], out: str | Path = "samples.png", steps: int = 30,
                      cfg_scale: float = 5.0, seed: int = 0, per_prompt: int = 1, use_ema: bool = True,
                      sampler: str = DEFAULT_SAMPLER, device: str | None = None,
                      sampler_options: dict | None = None) -> Path:
    """Sample ``per_prompt`` images of each prompt from a checkpoint into one PNG grid (a row per prompt, each
    image labelled with its prompt).

    ``device`` defaults to the GPU when torch sees one, else the CPU; a seed gives the same
    initial noise on every device (it is drawn on the CPU).
    """
    from ..images import labelled_grid, save_png

    bundle = load_for_sampling(spec, use_ema=use_ema, device=device)
    labels = [p for p in prompts for _ in range(per_prompt)]
    images = bundle.sample(labels, steps=steps, cfg_scale=cfg_scale, seed=seed, sampler=sampler,
                           sampler_options=sampler_options)
    return save_png(labelled_grid(images, labels, per_prompt), out)       # each tile over its prompt
