"""REPA: an optional alignment loss with a frozen encoder; off by default, exact to resume, chainable."""

import pytest
import torch

from tests.data.tiny_models import save_tiny_vae
from tests.train.conftest import losses
from workbench.data.prepare import prepare
from workbench.data.prepared_format import PreparedInfo
from workbench.model import MicroDiT
from workbench.train import Stage, Trainer
from workbench.train.repa import build_repa


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    return save_tiny_vae(tmp_path_factory.mktemp("vae") / "vae")


@pytest.fixture(scope="module")
def vae_data(tmp_path_factory, tiny_vae):
    """32 shapes scenes at 16 px through the tiny VAE (f=2: 8x8x4 latents)."""
    out = tmp_path_factory.mktemp("prepared") / "vae16"
    prepare(source="shapes", out=out, resolutions=(16,), limit=32, codec=f"vae:{tiny_vae}",
            text_encoder_options={"trim_padding": True}, progress=False)
    return out


def vae_stage(make_stage, data, **changes) -> Stage:
    model = {"depth": 3, "width": 64, "mixer_width": 64, "in_channels": 4, "patch_size": 2}
    return make_stage(data=str(data), model_overrides=model, **changes)


def test_repa_is_off_by_default_and_the_loss_is_unchanged(make_stage):
    stage = make_stage(steps=2)
    assert stage.repa_weight == 0
    trainer = Trainer(stage, progress=False)
    trainer.run()
    assert trainer.repa is None and "repa_loss" not in trainer.history[-1]


def test_repa_with_the_data_codec_trains_the_projector_and_lowers_its_loss(make_stage, vae_data):
    stage = vae_stage(make_stage, vae_data, steps=25, repa_weight=0.5, repa_depth=1, mask_ratio=0.5, lr=3e-3)
    trainer = Trainer(stage, progress=False)
    trainer.run()
    repa = [r["repa_loss"] for r in trainer.history]
    assert all(0.0 <= v <= 2.0 for v in repa)
    assert sum(repa[-5:]) / 5 < 0.8 * sum(repa[:5]) / 5
    assert [g["name"] for g in trainer.optimizer.param_groups][-1] == "repa"


def test_repa_targets_are_the_kept_tokens_features(vae_data):
    info = PreparedInfo.read(vae_data)
    model = MicroDiT.from_preset("nano", depth=2, width=64, mixer_width=64, in_channels=4, patch_size=2)
    repa = build_repa("codec", info, model, depth=1)
    repa.attach(model)
    latents = torch.randn(2, 4, 8, 8)
    noise = torch.rand(2, 16)
    model(latents, torch.zeros(2), torch.randn(2, 5, 384), mask_ratio=0.75, mask_noise=noise)
    assert repa.hidden.shape == (2, 4, 64)                       # 16 tokens, 4 kept, backbone width 64
    loss = repa.per_sample_loss(latents, 0.75, noise)
    assert loss.shape == (2,) and repa.hidden is None
    with pytest.raises(RuntimeError, match="forward pass"):
        repa.per_sample_loss(latents, 0.75, noise)
    with pytest.raises(ValueError, match="repa_depth"):
        build_repa("codec", info, model, depth=5).attach(model)


def test_repa_resume_reproduces_the_uninterrupted_run(make_stage, vae_data, tmp_path):
    full = vae_stage(make_stage, vae_data, steps=6, repa_weight=0.5, run="full")
    Trainer(full, progress=False).run()
    part = full.replace(run="part")
    first = Trainer(part, progress=False)
    first.run(steps=3)
    Trainer(part, progress=False).run()
    assert losses(part) == losses(full)


def test_a_repa_stage_starts_from_a_stage_without_it_in_full_mode(make_stage, vae_data):
    plain = vae_stage(make_stage, vae_data, steps=2, name="plain")
    Trainer(plain, progress=False).run()
    aligned = vae_stage(make_stage, vae_data, steps=2, name="aligned", repa_weight=0.5, init_from=str(plain.stage_dir),
                        init_mode="full")
    trainer = Trainer(aligned, progress=False)
    state = trainer.optimizer.state
    dense = trainer.optimizer.param_groups[0]["params"][0]
    assert dense in state and state[dense]["step"] == 2           # the dense moments carried over
    trainer.run()
    again = vae_stage(make_stage, vae_data, steps=1, name="again", init_from=str(aligned.stage_dir), init_mode="full")
    Trainer(again, progress=False).run()                          # and back to no REPA


def test_repa_with_pixel_data_needs_an_encoder_by_path(make_stage, tiny_vae):
    with pytest.raises(ValueError, match="repa_encoder"):
        Trainer(make_stage(repa_weight=0.5), progress=False)                       # pixel data has no codec VAE
    trainer = Trainer(make_stage(repa_weight=0.5, repa_encoder=f"vae:{tiny_vae}", steps=2), progress=False)
    trainer.run()
    assert trainer.history[-1]["repa_loss"] > 0


def test_bad_repa_settings_are_named():
    with pytest.raises(ValueError, match="repa_encoder"):
        Stage(repa_encoder="dino")
    with pytest.raises(ValueError, match="repa_weight"):
        Stage(repa_weight=-1.0)
