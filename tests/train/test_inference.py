"""One loader for sampling: a checkpoint carries what sampling needs, from any folder, without its data."""

import json
import shutil

import numpy as np
import pytest

from workbench.train import Trainer
from workbench.train import checkpoint as ckpt
from workbench.train.inference import load_for_sampling, sample_checkpoint


def test_a_checkpoint_samples_from_another_folder_with_its_training_data_deleted(make_stage, shapes_data, tmp_path,
                                                                                 monkeypatch):
    data = tmp_path / "own_data"
    shutil.copytree(shapes_data, data)
    stage = make_stage(data=str(data), steps=2, sample_cfg_scale=2.5, sample_prompts=["a blue star"])
    Trainer(stage, progress=False).run()
    record = ckpt.read_config(ckpt.latest_valid_checkpoint(stage.checkpoint_dir))["sampling"]
    assert record["codec"] == "pixel" and record["text_encoder"]["spec"] == "default"
    assert record["resolution"] == 16 and record["sigma_data"] == 0.5 and record["prompts"] == ["a blue star"]

    shutil.rmtree(data)
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    bundle = load_for_sampling(stage.stage_dir)
    assert bundle.resolution == 16 and bundle.default_cfg_scale == 2.5 and bundle.ema is False
    images = bundle.sample(["a red circle", "a blue square"], steps=2)
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8
    assert sample_checkpoint(stage.stage_dir, ["a red circle"], out="grid.png", steps=2).is_file()


def test_per_sample_seeds_make_a_sample_independent_of_its_batch(make_stage):
    stage = make_stage(steps=2)
    Trainer(stage, progress=False).run()
    bundle = load_for_sampling(stage.stage_dir)
    both = bundle.sample(["a red circle", "a blue square"], steps=3, seeds=[11, 12])
    alone = bundle.sample(["a blue square"], steps=3, seeds=[12])
    assert np.abs(both[1].astype(int) - alone[0]).max() <= 1
    with pytest.raises(ValueError, match="one per prompt"):
        bundle.sample(["a red circle"], seeds=[1, 2])


def test_an_old_checkpoint_without_a_sampling_record_names_its_missing_data(make_stage, shapes_data, tmp_path):
    data = tmp_path / "own_data"
    shutil.copytree(shapes_data, data)
    stage = make_stage(data=str(data), steps=1)
    Trainer(stage, progress=False).run()
    path = ckpt.latest_valid_checkpoint(stage.checkpoint_dir)
    config = ckpt.read_config(path)
    del config["sampling"]                       # as written before checkpoints carried the record
    rewrite_config(path, config)
    assert load_for_sampling(path).resolution == 16          # falls back to the prepared data
    shutil.rmtree(data)
    with pytest.raises(FileNotFoundError, match="predates self-contained checkpoints"):
        load_for_sampling(path)


def test_a_missing_vae_says_how_to_point_at_it(make_stage, tmp_path):
    stage = make_stage(steps=1)
    Trainer(stage, progress=False).run()
    path = ckpt.latest_valid_checkpoint(stage.checkpoint_dir)
    config = ckpt.read_config(path)
    config["sampling"]["codec"] = f"vae:{tmp_path / 'gone-vae'}"
    rewrite_config(path, config)
    with pytest.raises(FileNotFoundError, match="vae="):
        load_for_sampling(path)

    # what the message says: point at the VAE's copy on this machine (here a tiny 3-channel one)
    from tests.data.tiny_models import save_tiny_vae
    from workbench.widgets import SamplerPanel

    here = save_tiny_vae(tmp_path / "vae-here", latent_channels=3)
    bundle = load_for_sampling(path, vae=here)
    assert type(bundle.codec).__name__ == "VAECodec" and bundle.codec.channels == 3
    panel = SamplerPanel(path, vae=here, steps=1, batch_size=1)
    panel.generate(wait=True)
    assert panel.images.shape == (1, 16, 16, 3)


def rewrite_config(path, config):
    """Replace a checkpoint's config.json and its checksum in the manifest (as another version would have written
    it)."""
    import hashlib

    data = json.dumps(config).encode()
    (path / ckpt.CONFIG_FILE).write_bytes(data)
    manifest = json.loads((path / ckpt.MANIFEST).read_text())
    manifest["files"][ckpt.CONFIG_FILE] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (path / ckpt.MANIFEST).write_text(json.dumps(manifest))


def test_an_export_for_sampling_is_slim_half_precision_and_samples_like_the_checkpoint(make_stage, tmp_path):
    from workbench.train.inference import export_for_sampling

    stage = make_stage(steps=2, ema_decay=0.9)
    Trainer(stage, progress=False).run()
    out = export_for_sampling(stage.stage_dir, tmp_path / "export", extra={"command": "workbench train ..."})
    files = {p.name for p in out.iterdir()}
    assert ckpt.OPTIMIZER_FILE not in files and ckpt.EMA_FILE not in files
    original = ckpt.latest_valid_checkpoint(stage.checkpoint_dir)
    assert (out / ckpt.MODEL_FILE).stat().st_size < 0.6 * (original / ckpt.EMA_FILE).stat().st_size     # fp16
    state = ckpt.load_checkpoint(out, model=load_for_sampling(out).model)
    assert state.extra["command"] == "workbench train ..." and state.extra["ema"] is True
    a = load_for_sampling(stage.stage_dir).sample(["a red circle"], steps=3, seeds=[1])
    b = load_for_sampling(tmp_path / "export").sample(["a red circle"], steps=3, seeds=[1])
    assert np.abs(a.astype(int) - b).mean() < 2                    # fp16 rounding only


def test_a_16_channel_vae_like_the_ostris_one_trains_and_samples(tmp_path, one_thread):
    """The paper's second latent space (Ostris VAE, 16 channels) through diffusers' AutoencoderKL by local path;
    a tiny random one stands in for it (the SDXL VAE's 4 channels are tests/data/test_prepare.py's)."""
    from tests.data.tiny_models import save_tiny_vae
    from workbench.data.prepare import prepare
    from workbench.train import Stage

    vae = save_tiny_vae(tmp_path / "vae16", latent_channels=16)
    data = tmp_path / "data"
    prepare("shapes", data, codec=f"vae:{vae}", resolutions=(16,), limit=8, progress=False,
            text_encoder_options={"trim_padding": True})
    stage = Stage(name="s16", run="t", runs_dir=str(tmp_path / "runs"), data=str(data), resolution=16, model="nano",
                  model_overrides={"depth": 2, "width": 64, "mixer_width": 64, "in_channels": 16, "patch_size": 1,
                                   "sample_size": 8},
                  steps=1, global_batch=4, micro_batch=4, sample_steps=1, sample_prompts=["a red circle"])
    Trainer(stage, progress=False).run()
    bundle = load_for_sampling(stage.stage_dir)
    assert bundle.codec.channels == 16 and bundle.codec.path == vae.resolve()
    images = bundle.sample(["a red circle"], steps=2)
    assert images.shape == (1, 16, 16, 3)


def test_a_checkpoint_saved_before_newer_model_fields_loads_and_samples_identically(make_stage, tmp_path):
    from workbench.train.inference import REFERENCE_DIR

    old = tmp_path / "reference_before"
    shutil.copytree(REFERENCE_DIR, old)
    path = ckpt.resolve_checkpoint(old)
    config = json.loads((path / ckpt.CONFIG_FILE).read_text())
    for field in ("caption_mask_compat", "norm_eps"):     # as a workbench from before these fields wrote it
        del config["model"][field]
    config.pop("model_config_version", None)
    rewrite_config(path, config)
    assert ckpt.read_config(path)["model"] == ckpt.read_config(ckpt.resolve_checkpoint(REFERENCE_DIR))["model"]
    before, now = load_for_sampling(old), load_for_sampling("reference")
    a = before.sample(["a red circle", "two blue squares"], steps=3, seeds=[1, 2])
    b = now.sample(["a red circle", "two blue squares"], steps=3, seeds=[1, 2])
    assert np.array_equal(a, b)

    stage = make_stage(steps=1)                          # a run's checkpoint missing a field resumes as well
    Trainer(stage, progress=False).run()
    latest = ckpt.latest_valid_checkpoint(stage.checkpoint_dir)
    config = json.loads((latest / ckpt.CONFIG_FILE).read_text())
    assert config["model_config_version"] >= 2
    del config["model"]["caption_mask_compat"]
    rewrite_config(latest, config)
    resumed = Trainer(make_stage(steps=2), progress=False)
    assert resumed.step_count == 1
    resumed.run()
    assert resumed.done
