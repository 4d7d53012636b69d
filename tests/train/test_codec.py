"""train_codec: a diffusers AutoencoderKL trained on shapes, loadable as a codec, normalised latents, prepare-able."""

import pytest
import torch

from workbench.cli import main
from workbench.data.codecs import open_codec
from workbench.data.shapes import shapes_arrays
from workbench.train.codec import CodecConfig, reconstruction_psnr, train_codec

TINY = dict(block_out_channels=(16, 32), latent_channels=4, crop=16, resolutions=(16, 32), batch=8, lr=3e-3)


@pytest.fixture(scope="module")
def codec_dir(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("codec") / "shapes-f2"
    report = train_codec(CodecConfig(steps=60, **TINY), out=out, progress=False)
    return out, report


def test_training_improves_reconstruction_and_saves_a_loadable_vae(codec_dir):
    from workbench.train.codec import build_autoencoder

    out, report = codec_dir
    untrained = build_autoencoder(CodecConfig(**TINY)).eval()
    assert report["val_psnr"]["16"] > reconstruction_psnr(untrained, 16) + 3
    codec = open_codec(f"vae:{out}", sample_posterior=False, device="cpu")
    assert codec.channels == 4 and codec.downsample == 2 and codec.latent_size(32) == 16
    images, _ = shapes_arrays(8, resolution=32, split="val")
    assert codec.decode(codec.encode(images)).shape == images.shape


def test_latents_are_normalised_by_the_measured_scaling_and_shift(codec_dir):
    out, report = codec_dir
    codec = open_codec(f"vae:{out}", sample_posterior=False, device="cpu")
    assert codec.scaling_factor == pytest.approx(report["scaling_factor"])
    latents = codec.encode(shapes_arrays(64, resolution=16, split="train", seed=1)[0])
    assert abs(float(latents.mean())) < 0.3 and 0.6 < float(latents.std()) < 1.5


def test_prepare_reuses_the_trained_codec(codec_dir, tmp_path):
    from workbench.data.prepare import prepare
    from workbench.data.prepared_format import PreparedInfo

    out, _ = codec_dir
    prepare(source="shapes", out=tmp_path / "data", resolutions=(16,), limit=8, codec=f"vae:{out}",
            text_encoder_options={"trim_padding": True}, progress=False)
    info = PreparedInfo.read(tmp_path / "data")
    assert info.latent_shapes[16] == (4, 8, 8) and info.codec["path"] == str(out.resolve())


def test_train_codec_cli_writes_the_folder_and_a_report(tmp_path, capsys):
    out = tmp_path / "cli-codec"
    sets = ["steps=3", "block_out_channels=[16, 32]", "crop=16", "resolutions=[16]", "batch=4"]
    assert main(["train-codec", "--out", str(out), *[a for s in sets for a in ("--set", s)],
                 "--json", str(tmp_path / "codec.json")]) == 0
    assert (out / "config.json").is_file() and (tmp_path / "codec.json").is_file()
    assert f"--codec vae:{out}" in capsys.readouterr().out


def test_bad_codec_settings_are_named():
    with pytest.raises(ValueError, match="block_out_channels"):
        CodecConfig(block_out_channels=(16,))
    with pytest.raises(ValueError, match="crop"):
        CodecConfig(block_out_channels=(16, 32, 64), crop=10)
