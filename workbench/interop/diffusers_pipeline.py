"""``MicroDiTPipeline``: a diffusers ``DiffusionPipeline`` over a MicroDiT, its text encoder and its codec.

    pipe = MicroDiTPipeline.from_pretrained("exports/demo")            # made by export_pipeline / workbench export
    out = pipe(["a red circle", "a blue square"], negative_prompt="a green star", guidance_scale=5.0,
               num_inference_steps=30, generator=torch.Generator().manual_seed(0))
    out.images[0].save("red_circle.png")

Components: ``transformer`` (``MicroDiT``), ``scheduler`` (``MicroDiTHeunScheduler``, the workbench's
EDM Heun sampler, or diffusers' ``EDMEulerScheduler`` / ``EDMDPMSolverMultistepScheduler``),
``text_encoder`` + ``tokenizer`` (transformers), and ``vae`` (an ``AutoencoderKL``, or None for the
pixel codec). Sampling is ``workbench.diffusion.sample``, so a pipeline gives the same images as
SamplerPanel and ``workbench sample`` for the same noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import ConfigMixin, DiffusionPipeline, ImagePipelineOutput, SchedulerMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils.torch_utils import randn_tensor

from ..data.codecs import PixelCodec, VAECodec
from ..data.text import TextEncoder
from ..diffusion import SAMPLERS, EDMConfig, sample
from ..errors import InputError


class MicroDiTHeunScheduler(SchedulerMixin, ConfigMixin):
    """The workbench's EDM Heun sampler (Karras et al. 2022, Algorithm 1) as a pipeline component.

    It holds the σ schedule and σ_data; ``MicroDiTPipeline`` samples with the registered sampler whose
    ``pipeline_scheduler`` it is, "heun" (``workbench.diffusion.SAMPLERS``).
    """

    config_name = "scheduler_config.json"
    order = 2

    @register_to_config
    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5, rho: float = 7.0):
        pass


# scheduler class name -> the workbench sampler that runs it, read from the sampler registry
SCHEDULER_SAMPLERS = {entry.pipeline_scheduler: name for name, entry in SAMPLERS.items() if entry.pipeline_scheduler}


class MicroDiTPipeline(DiffusionPipeline):
    """Text-to-image with a MicroDiT (see the module docstring for the components).

    Args (beyond the components):
        text_max_length: tokens per caption, as the model was trained (77).
        text_trim_padding: the captions were embedded with ``trim_padding`` (zeros at padding).
        text_open_clip: the text encoder is an open_clip text tower (the paper's DFN5B CLIP): captions are
            cleaned, padded with id 0 and encoded with causal attention only, as open_clip does.
        resolution: default image side in pixels (the training resolution).
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _optional_components = ["vae"]                   # None: the pixel codec

    def __init__(self, transformer, scheduler, text_encoder, tokenizer, vae=None, text_max_length: int = 77,
                 text_trim_padding: bool = False, text_open_clip: bool = False, resolution: int | None = None):
        super().__init__()
        if type(scheduler).__name__ not in SCHEDULER_SAMPLERS:
            raise InputError(f"scheduler must be one of {sorted(SCHEDULER_SAMPLERS)}, got {type(scheduler).__name__}")
        self.register_modules(transformer=transformer, scheduler=scheduler, text_encoder=text_encoder,
                              tokenizer=tokenizer, vae=vae)
        self.register_to_config(text_max_length=int(text_max_length), text_trim_padding=bool(text_trim_padding),
                                text_open_clip=bool(text_open_clip), resolution=resolution)

    @property
    def edm(self) -> EDMConfig:
        """The EDM constants of the scheduler's config."""
        cfg = self.scheduler.config
        return EDMConfig(sigma_data=cfg.sigma_data, sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max, rho=cfg.rho)

    @property
    def codec(self):
        """The latent codec: the pixel codec without a VAE, else the VAE with its scaling and shift."""
        return PixelCodec() if self.vae is None else VAECodec.from_module(self.vae)

    def encode_prompt(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Caption token states (B, L, D) and mask (B, L), exactly as ``workbench prepare`` embeds captions."""
        return TextEncoder.from_modules(self.text_encoder, self.tokenizer, self.config.text_max_length,
                                        self.config.text_trim_padding,
                                        open_clip=self.config.get("text_open_clip", False)).encode(prompts)

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], negative_prompt: str | list[str] | None = None,
                 guidance_scale: float = 5.0, num_inference_steps: int = 30, generator: torch.Generator | None = None,
                 num_images_per_prompt: int = 1, height: int | None = None, output_type: str = "pil",
                 return_dict: bool = True):
        """Generate images; ``output_type`` "pil" (PIL images), "np" (uint8 (B, H, W, 3)) or "latent".

        The initial noise is drawn on the CPU from ``generator``, so a seed gives the same images on
        every device. ``height`` is the square side in pixels (default: the training resolution).
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        caption, mask = self.encode_prompt(prompts)                                       # (B, L, D), (B, L)
        negative = negative_mask = None
        if negative_prompt is not None:
            negatives = [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt)
            if len(negatives) == 1:
                negatives = negatives * len(prompts)
            elif len(negatives) * num_images_per_prompt == len(prompts):
                negatives = [n for n in negatives for _ in range(num_images_per_prompt)]
            else:
                raise InputError(f"negative_prompt: give one, or one per prompt ({len(prompts)}), got {len(negatives)}")
            negative, negative_mask = self.encode_prompt(negatives)
        codec = self.codec
        side = height or self.config.resolution or self.transformer.config.sample_size * codec.downsample
        if side % codec.downsample:
            raise InputError(f"height {side} is not a multiple of the codec's downsample factor {codec.downsample}")
        latent_side = side // codec.downsample
        shape = (len(prompts), self.transformer.config.in_channels, latent_side, latent_side)
        noise = randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32)
        with self.progress_bar(total=num_inference_steps) as bar:
            latents = sample(self.transformer, caption, mask, steps=num_inference_steps, cfg_scale=guidance_scale,
                             sampler=SCHEDULER_SAMPLERS[type(self.scheduler).__name__], latent_size=latent_side,
                             edm=self.edm, noise=noise, negative=negative, negative_mask=negative_mask,
                             callback=lambda *_: bar.update())                           # (B, C, h, w)
        if output_type == "latent":
            images = latents
        else:
            images = codec.decode(latents)                                                # (B, H, W, 3) uint8
            if output_type == "pil":
                images = self.numpy_to_pil(images.astype(np.float32) / 255.0)
            elif output_type != "np":
                raise InputError(f"output_type must be 'pil', 'np' or 'latent', got {output_type!r}")
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)


def export_pipeline(spec: str | Path, out: str | Path, use_ema: bool = True) -> Path:
    """Write a workbench checkpoint or stage folder (EMA weights by default) as a diffusers pipeline folder.

    The text encoder and codec are the ones the checkpoint records (``load_for_sampling``); the
    scheduler is ``MicroDiTHeunScheduler`` with the stage's σ_data. Returns ``out``.
    """
    from ..train.inference import load_for_sampling

    bundle = load_for_sampling(spec, use_ema=use_ema, device="cpu")
    encoder, edm = bundle.text_encoder, bundle.edm
    scheduler = MicroDiTHeunScheduler(sigma_min=edm.sigma_min, sigma_max=edm.sigma_max, sigma_data=edm.sigma_data,
                                      rho=edm.rho)
    vae = bundle.codec.vae if isinstance(bundle.codec, VAECodec) else None
    pipe = MicroDiTPipeline(transformer=bundle.model, scheduler=scheduler, text_encoder=encoder.model,
                            tokenizer=encoder.tokenizer, vae=vae, text_max_length=encoder.max_length,
                            text_trim_padding=encoder.trim_padding, text_open_clip=encoder.kind == "open_clip",
                            resolution=bundle.resolution)
    pipe.save_pretrained(str(out))
    return Path(out)
