"""MicroDiTPipeline: a workbench run as a diffusers pipeline that gives the workbench's own samples, round-trips
through save_pretrained / from_pretrained, takes diffusers' EDM schedulers, negative prompts and a VAE."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.data.tiny_models import save_tiny_vae
from tests.train.conftest import make_stage, shapes_data  # noqa: F401  (fixtures)
from workbench.cli import main
from workbench.data.codecs import VAECodec
from workbench.diffusion import EDMConfig, sample
from workbench.diffusion.schedulers import make_scheduler
from workbench.interop import MicroDiTHeunScheduler, MicroDiTPipeline, export_pipeline
from workbench.model import MicroDiT
from workbench.train import Trainer
from workbench.train.inference import load_for_sampling


@pytest.fixture
def exported(make_stage, tmp_path):  # noqa: F811
    """A 2-step stage (EMA on) exported as a pipeline; returns (stage, pipeline folder)."""
    stage = make_stage(steps=2, ema_decay=0.9)
    Trainer(stage, progress=False).run()
    return stage, export_pipeline(stage.stage_dir, tmp_path / "pipe")


def workbench_images(bundle, prompts, steps, cfg, seed, sampler="heun", negative=None):
    caption, mask = bundle.text_encoder.encode(prompts)
    noise = torch.randn((len(prompts), bundle.model.config.in_channels, bundle.resolution, bundle.resolution),
                        generator=torch.Generator().manual_seed(seed))
    neg = bundle.text_encoder.encode(negative) if negative else (None, None)
    latents = sample(bundle.model, caption, mask, steps=steps, cfg_scale=cfg, edm=bundle.edm, noise=noise,
                     latent_size=bundle.resolution, sampler=sampler, negative=neg[0], negative_mask=neg[1])
    return bundle.codec.decode(latents)


def test_an_exported_run_samples_exactly_like_the_workbench(exported):
    stage, folder = exported
    pipe = MicroDiTPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.transformer) is MicroDiT and pipe.vae is None and pipe.config.resolution == 16
    assert pipe.config.text_trim_padding is True and pipe.scheduler.config.sigma_data == stage.sigma_data
    out = pipe(["a red circle", "a blue square"], num_inference_steps=3, guidance_scale=2.0,
               generator=torch.Generator().manual_seed(7), output_type="np")
    bundle = load_for_sampling(stage.stage_dir)                      # the EMA weights, as exported
    expected = workbench_images(bundle, ["a red circle", "a blue square"], 3, 2.0, 7)
    assert out.images.dtype == np.uint8 and np.array_equal(out.images, expected)

    pil = pipe("a red circle", num_inference_steps=2, num_images_per_prompt=3).images
    assert len(pil) == 3 and pil[0].size == (16, 16)


def test_a_negative_prompt_is_the_unconditional_side(exported):
    stage, folder = exported
    pipe = MicroDiTPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(num_inference_steps=3, guidance_scale=3.0, output_type="np")
    latent = dict(kw, output_type="latent")
    plain = pipe("a red circle", generator=torch.Generator().manual_seed(0), **latent).images
    other = pipe("a red circle", negative_prompt="a green star", generator=torch.Generator().manual_seed(0),
                 **latent).images
    assert not torch.equal(plain, other)                          # (a 2-step model barely reads captions)
    negated = pipe("a red circle", negative_prompt="a green star", generator=torch.Generator().manual_seed(0),
                   **kw).images
    bundle = load_for_sampling(stage.stage_dir)
    assert np.array_equal(negated, workbench_images(bundle, ["a red circle"], 3, 3.0, 0, negative=["a green star"]))
    with pytest.raises(ValueError, match="negative_prompt"):
        pipe(["a", "b", "c"], negative_prompt=["x", "y"], **kw)


def test_diffusers_edm_schedulers_drive_the_same_model(exported):
    stage, folder = exported
    bundle = load_for_sampling(stage.stage_dir)
    pipe = MicroDiTPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    for name in ("diffusers-euler", "diffusers-dpmpp"):
        pipe.scheduler = make_scheduler(name, bundle.edm)
        images = pipe("a red circle", num_inference_steps=4, guidance_scale=2.0,
                      generator=torch.Generator().manual_seed(3), output_type="np").images
        assert np.array_equal(images, workbench_images(bundle, ["a red circle"], 4, 2.0, 3, sampler=name))


def test_save_pretrained_round_trips_a_pipeline_with_a_vae(tmp_path):
    vae_dir = save_tiny_vae(tmp_path / "vae")                       # f=2, 4 channels
    codec = VAECodec(vae_dir, sample_posterior=False, device="cpu")
    torch.manual_seed(0)
    transformer = MicroDiT.from_preset("nano", depth=2, width=64, mixer_width=64, in_channels=4, sample_size=8).eval()
    bundle = load_for_sampling("reference")                         # only for its MiniLM text encoder
    pipe = MicroDiTPipeline(transformer=transformer, scheduler=MicroDiTHeunScheduler(sigma_data=0.5),
                            text_encoder=bundle.text_encoder.model, tokenizer=bundle.text_encoder.tokenizer,
                            vae=codec.vae, resolution=16)
    pipe.set_progress_bar_config(disable=True)
    first = pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                 output_type="np").images
    assert first.shape == (1, 16, 16, 3)
    pipe.save_pretrained(tmp_path / "saved")
    again = MicroDiTPipeline.from_pretrained(tmp_path / "saved")
    again.set_progress_bar_config(disable=True)
    assert type(again.vae).__name__ == "AutoencoderKL" and type(again.scheduler) is MicroDiTHeunScheduler
    second = again("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                   output_type="np").images
    assert np.array_equal(first, second)
    latents = again("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                    output_type="latent").images
    assert latents.shape == (1, 4, 8, 8) and np.array_equal(VAECodec.from_module(again.vae).decode(latents), first)


def test_the_export_cli_writes_a_loadable_folder(tmp_path, capsys):
    assert main(["export", "reference", "--out", str(tmp_path / "ref")]) == 0
    assert "wrote a diffusers pipeline" in capsys.readouterr().out
    pipe = MicroDiTPipeline.from_pretrained(tmp_path / "ref")
    assert pipe.config.resolution == 32 and isinstance(pipe.scheduler, MicroDiTHeunScheduler)
    assert EDMConfig(sigma_data=pipe.scheduler.config.sigma_data).sigma_data == 0.5
