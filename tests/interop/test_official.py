"""convert-official: the paper's DiT checkpoints as workbench checkpoints, equal to the official code.

The fixture (tests/fixtures/official_dit, README there) is a small official ``DiT`` built once with the
official code, with random non-zero weights, and the outputs that code computed: the network F at mask
0 and 0.75, the EDM loss, and 30 Heun steps with CFG 5.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.data.tiny_models import save_tiny_vae
from workbench.cli import main
from workbench.diffusion import EDMConfig, EDMLoss, sample
from workbench.interop import MicroDiTPipeline, OfficialCheckpointError, convert_official, export_pipeline
from workbench.interop.official import official_config, workbench_name
from workbench.model import MicroDiT
from workbench.train import checkpoint as ckpt
from workbench.train.checkpoint import load_model
from workbench.train.inference import load_for_sampling

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "official_dit"
STATE = FIXTURE / "official_state_dict.safetensors"
CONFIG = FIXTURE / "microdit.yaml"
OPENCLIP_FIXTURE = FIXTURE.parent / "openclip_text"
TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def reference():
    return load_file(str(FIXTURE / "reference.safetensors"))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The fixture's official DiT converted with the CLI; returns the checkpoint folder."""
    out = tmp_path_factory.mktemp("converted") / "official"
    assert main(["convert-official", str(STATE), "--arch", "custom", "--config", str(CONFIG), "--out", str(out)]) == 0
    return ckpt.resolve_checkpoint(out)


def test_the_converted_network_equals_the_official_one_at_mask_0_and_0_75(converted, reference):
    model = load_model(converted)
    assert model.config.caption_mask_compat and model.config.sample_size == 8
    r = reference
    with torch.no_grad():
        full = model(r["x"], r["c_noise"], r["caption"])
        masked_caption = model(r["x"], r["c_noise"], r["caption"], r["caption_mask"])   # the official code has none
        kept = model(r["x"], r["c_noise"], r["caption"], mask_ratio=0.75, mask_noise=r["mask_noise"])
    torch.testing.assert_close(full.sample, r["F_mask0"], **TOL)
    torch.testing.assert_close(masked_caption.sample, r["F_mask0"], **TOL)
    assert torch.equal(kept.keep, r["mask75"] == 0)                       # the same kept set
    torch.testing.assert_close(kept.sample, r["F_mask75"], **TOL)
    assert not torch.allclose(kept.sample, full.sample, atol=1e-3)        # masking changes F: the check has teeth


@pytest.mark.parametrize("tag, ratio", [("0", 0.0), ("75", 0.75)])
def test_the_edm_loss_equals_the_official_one(converted, reference, tag, ratio):
    model = load_model(converted).train()
    r = reference
    out = EDMLoss(EDMConfig(sigma_data=0.9))(model, r["x0"], r["caption"], mask_ratio=ratio,
                                            sigma=r[f"loss_sigma{tag}"], noise=r[f"loss_noise{tag}"],
                                            mask_noise=r[f"loss_mask_noise{tag}"])
    torch.testing.assert_close(out.loss.reshape(1), r[f"loss_mask{tag}"], **TOL)


def test_30_heun_steps_with_cfg_5_equal_the_official_sampler(converted, reference):
    model = load_model(converted)
    r = reference
    x = sample(model, r["caption"], steps=30, cfg_scale=5.0, noise=r["heun_noise"], edm=EDMConfig(sigma_data=0.9))
    # 60 chained forwards with CFG 5 amplify fp32 rounding, which differs between CPUs (their SIMD paths): the
    # error is measured against the trajectory's scale (values up to ~25), 2e-5 of it at most
    scale = r["heun_cfg5_steps30"].abs().max()
    assert (x - r["heun_cfg5_steps30"]).abs().max() <= 2e-5 * scale


def test_composer_checkpoints_and_prefixes_convert_to_the_same_weights(tmp_path, converted):
    official = load_file(str(STATE))
    composer = {"state": {"model": {**{f"module.dit.{k}": v for k, v in official.items()},
                                    "module.vae.decoder.weight": torch.ones(2)},
                          "optimizers": {}}, "rng": [{"python": 1}]}
    torch.save(composer, tmp_path / "composer.pt")
    path = convert_official(tmp_path / "composer.pt", tmp_path / "out", arch=None, config=CONFIG)
    assert ckpt.read_config(path)["model"] == ckpt.read_config(converted)["model"]
    ours, theirs = load_file(str(path / ckpt.MODEL_FILE)), load_file(str(converted / ckpt.MODEL_FILE))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert ckpt.read_manifest(path)["final"] is True


def test_a_checkpoint_that_pickles_objects_needs_allow_pickle(tmp_path):
    torch.save({"state": {"model": load_file(str(STATE))}, "timestamp": Path("x")}, tmp_path / "pickled.pt")
    with pytest.raises(OfficialCheckpointError, match="--allow-pickle"):
        convert_official(tmp_path / "pickled.pt", tmp_path / "out", arch=None, config=CONFIG)
    convert_official(tmp_path / "pickled.pt", tmp_path / "out", arch=None, config=CONFIG, allow_pickle=True)


@pytest.mark.parametrize("name, damage", [("random.safetensors", "random"), ("cut.safetensors", "truncated"),
                                          ("random.pt", "random")])
@pytest.mark.parametrize("allow_pickle", [False, True])
def test_random_or_truncated_files_are_one_line_naming_the_file(tmp_path, capsys, name, damage, allow_pickle):
    path = tmp_path / name
    path.write_bytes(os.urandom(4096) if damage == "random" else STATE.read_bytes()[:5000])
    flags = ["--allow-pickle"] if allow_pickle else []
    code = main(["convert-official", str(path), "--arch", "custom", "--config", str(CONFIG), "--out",
                 str(tmp_path / "out"), *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"error: {path} is not a") and "download it again" in err, err
    assert "--allow-pickle" not in err and len(err.splitlines()) == 1


def test_a_renamed_or_missing_key_fails_and_lists_every_one(tmp_path):
    official = load_file(str(STATE))
    official["blocks.2.attn.qkv_renamed.weight"] = official.pop("blocks.2.attn.qkv.weight")
    del official["final_layer.adaLN_modulation.1.bias"]
    save_file(official, str(tmp_path / "bad.safetensors"))
    with pytest.raises(OfficialCheckpointError) as err:
        convert_official(tmp_path / "bad.safetensors", tmp_path / "out", arch=None, config=CONFIG)
    message = str(err.value)
    for key in ("blocks.2.attn.qkv.weight", "final_layer.adaln.bias", "blocks.2.attn.qkv_renamed.weight"):
        assert key in message
    assert not (tmp_path / "out").exists()                                  # nothing written


def test_a_checkpoint_of_another_size_fails_with_shapes_and_a_hint(tmp_path):
    with pytest.raises(OfficialCheckpointError, match=r"shape mismatch: .*x_embedder\.proj\.weight.*--arch"):
        convert_official(STATE, tmp_path / "out", arch=None, config={**_yaml(), "width": 128, "mixer_width": 128})


def test_the_computed_buffers_are_checked(tmp_path):
    official = load_file(str(STATE))
    official["mask_token"] = torch.ones_like(official["mask_token"])
    official["pos_embed"] = official["pos_embed"] + 0.5
    save_file(official, str(tmp_path / "bad.safetensors"))
    expected = r"pos_embed: not the 2-D sin-cos.*mask_token: expected all zeros"
    with pytest.raises(OfficialCheckpointError, match=expected):
        convert_official(tmp_path / "bad.safetensors", tmp_path / "out", arch=None, config=CONFIG)


def test_every_tensor_of_the_paper_presets_has_an_official_name():
    """Every MicroDiT tensor name of xl_2 / tiny_2 is the image of an official name under the renames."""
    for preset in ("xl_2", "tiny_2"):
        with torch.device("meta"):
            model = MicroDiT(**_cfg(preset))
        assert {workbench_name(n) for n in _official_names(model)} == set(model.state_dict())


def test_a_converted_model_samples_exports_and_opens_in_the_widgets(tmp_path):
    """With the paper's kind of encoders by local path: an open_clip text tower (32-d) and an AutoencoderKL."""
    clip, vae = OPENCLIP_FIXTURE, save_tiny_vae(tmp_path / "vae")
    path = convert_official(STATE, tmp_path / "xl", arch=None, config=CONFIG, vae=vae, text_encoder=clip)
    bundle = load_for_sampling(tmp_path / "xl", device="cpu")
    assert bundle.text_encoder.kind == "open_clip"
    assert bundle.model.config.caption_mask_compat and bundle.resolution == 16 and bundle.edm.sigma_data == 0.9
    images = bundle.sample(["a red circle"], steps=2, cfg_scale=5.0)
    assert images.shape == (1, 16, 16, 3) and images.dtype == np.uint8   # tiny VAE: f=2, 8x8 latents
    export_pipeline(path, tmp_path / "pipe")
    pipe = MicroDiTPipeline.from_pretrained(tmp_path / "pipe")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.config.text_open_clip and type(pipe.transformer) is MicroDiT
    out = pipe(["a red circle", "two blue squares"], num_inference_steps=3, guidance_scale=5.0,
               generator=torch.Generator().manual_seed(3), output_type="np").images
    caption, mask = bundle.encode_prompts(["a red circle", "two blue squares"])
    noise = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(3))
    expected = bundle.codec.decode(sample(bundle.model, caption, mask, steps=3, cfg_scale=5.0, edm=bundle.edm,
                                          noise=noise))
    assert np.array_equal(out, expected)                      # the pipeline encodes captions the open_clip way

    from workbench.widgets import MaskExplorer, SamplerPanel

    panel = SamplerPanel(tmp_path / "xl", steps=2, batch_size=1)
    assert panel.latent_side == 8
    explorer = MaskExplorer(tmp_path / "xl", caption="a red circle")            # its codec, encoder and σ_data
    assert explorer.num_tokens == 16 and explorer.sigma_data == 0.9 and explorer.text_encoder.kind == "open_clip"
    assert explorer.checkpoint == path and explorer.keep.sum() == 4               # mask 0.75 of 16 patches
    import ipywidgets

    ipywidgets.Widget.close_all()          # closed now, not by the garbage collector at interpreter exit


def _yaml() -> dict:
    import yaml

    return yaml.safe_load(CONFIG.read_text())


def _cfg(preset: str) -> dict:
    from workbench.config import to_dict

    return to_dict(official_config(preset))


def _official_names(model: MicroDiT) -> list[str]:
    """The official DiT's names for a MicroDiT's tensors, written out independently of RENAMES' regexes."""
    out = []
    inverse = [("patch_embed.proj.", "x_embedder.proj."), ("t_embed.fc1.", "t_embedder.mlp.0."),
               ("t_embed.fc2.", "t_embedder.mlp.2."), ("caption_embed.proj.", "y_embedder.y_proj."),
               ("caption_embed.block.ffn.", "y_emb_preprocess.mlp."), ("caption_embed.block.", "y_emb_preprocess."),
               ("caption_embed.pool_mlp.", "pooled_y_emb_process."), ("mixer_in.", "patch_mixer_map_xin."),
               ("mixer_out.", "patch_mixer_map_xout."), ("mixer_caption.", "patch_mixer_map_y."),
               ("mixer.", "patch_mixer."), ("final_layer.norm.", "final_layer.norm_final."),
               ("final_layer.adaln.", "final_layer.adaLN_modulation.1.")]
    for name in model.state_dict():
        for ours, theirs in inverse:
            if name.startswith(ours):
                name = theirs + name[len(ours):]
                break
        name = (name.replace(".adaln.", ".adaLN_modulation.1.").replace(".cross_attn.q.", ".cross_attn.q_linear.")
                .replace(".cross_attn.kv.", ".cross_attn.kv_linear.").replace(".ffn.", ".mlp."))
        out.append(name)
    return out


def test_fine_tuning_a_converted_model_on_imported_official_data(tmp_path, one_thread):
    """The docs/interop.md path: convert-official, import-mds, then a stage with init_from."""
    import yaml

    from tests.data.mds_writer import write_mds
    from tests.data.test_mds import COLUMNS, as_mds, fixture_rows
    from tests.train.conftest import BASE
    from workbench.data.mds_import import import_mds
    from workbench.train import Stage, Trainer

    vae = save_tiny_vae(tmp_path / "vae")
    convert_official(STATE, tmp_path / "xl", arch=None, config=CONFIG, vae=vae, text_encoder=OPENCLIP_FIXTURE)
    src = write_mds(tmp_path / "mds", COLUMNS, as_mds(fixture_rows()))
    import_mds(src, tmp_path / "data", vae=vae, text_encoder=OPENCLIP_FIXTURE, progress=False)
    overrides = {**yaml.safe_load(CONFIG.read_text()), "caption_mask_compat": True}
    stage = Stage(**{**BASE, "data": str(tmp_path / "data"), "runs_dir": str(tmp_path / "runs"), "resolution": 32,
                     "model_overrides": overrides, "sigma_data": 0.9, "global_batch": 4, "micro_batch": 4,
                     "steps": 2, "init_from": str(tmp_path / "xl")})
    trainer = Trainer(stage, progress=False)
    assert trainer.init_info["path"] == str(ckpt.resolve_checkpoint(tmp_path / "xl"))
    start = {k: v.clone() for k, v in trainer.raw_model.state_dict().items()}
    converted = load_file(str(ckpt.resolve_checkpoint(tmp_path / "xl") / ckpt.MODEL_FILE))
    assert all(torch.equal(start[k], converted[k]) for k in converted)   # it starts from the official weights
    history = trainer.run()
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)
