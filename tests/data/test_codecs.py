"""Latent codecs: pixel identity and a tiny diffusers AutoencoderKL loaded by path."""

import json

import numpy as np
import pytest
import torch

from tests.data.tiny_models import VAE_SCALING, VAE_SHIFT, save_tiny_vae
from workbench.data.codecs import PixelCodec, VAECodec, open_codec


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)  # (B, H, W, 3)


@pytest.fixture(scope="module")
def vae(tiny_vae_dir):
    return open_codec(f"vae:{tiny_vae_dir}", device="cpu")


# ---------------------------------------------------------------------------------------------
#  Pixel codec
# ---------------------------------------------------------------------------------------------

def test_pixel_round_trip_is_exact_and_in_unit_range(images):
    codec = open_codec("pixel")
    lat = codec.encode(images)
    assert lat.shape == (3, 3, 32, 32) and lat.dtype == torch.float32
    assert lat.min() >= -1 and lat.max() <= 1
    assert np.array_equal(codec.decode(lat), images)
    full = np.array([[[[0, 255, 128]]]], dtype=np.uint8)
    assert codec.encode(full).flatten().tolist() == pytest.approx([-1.0, 1.0, 128 / 127.5 - 1], abs=1e-6)


def test_pixel_describe_is_json_and_sizes_are_identity():
    codec = PixelCodec()
    assert (codec.channels, codec.downsample, codec.latent_size(37)) == (3, 1, 37)
    d = json.loads(json.dumps(codec.describe()))
    assert d["kind"] == "pixel" and d["config_hash"] == codec.config_hash()


# ---------------------------------------------------------------------------------------------
#  VAE codec
# ---------------------------------------------------------------------------------------------

def test_vae_encode_decode_shapes(vae, images):
    assert (vae.channels, vae.downsample, vae.latent_size(32)) == (4, 2, 16)
    lat = vae.encode(images, generator=torch.Generator().manual_seed(0))
    assert lat.shape == (3, 4, 16, 16) and lat.dtype == torch.float32
    out = vae.decode(lat)
    assert out.shape == (3, 32, 32, 3) and out.dtype == np.uint8


def test_vae_applies_scaling_and_shift_like_the_raw_autoencoder(tiny_vae_dir, images):
    from diffusers import AutoencoderKL

    codec = VAECodec(tiny_vae_dir, sample_posterior=False, device="cpu")
    assert (codec.scaling_factor, codec.shift_factor) == (VAE_SCALING, VAE_SHIFT)
    raw = AutoencoderKL.from_pretrained(tiny_vae_dir).eval()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1  # (B, 3, H, W)
    with torch.no_grad():
        z = raw.encode(x).latent_dist.mean  # (B, 4, 16, 16)
        lat = codec.encode(images)
        torch.testing.assert_close(lat, (z - VAE_SHIFT) * VAE_SCALING)
        recon = raw.decode(lat / VAE_SCALING + VAE_SHIFT).sample  # (B, 3, 32, 32)
    expected = ((recon + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.abs(codec.decode(lat).astype(int) - expected.astype(int)).max() <= 1


def test_vae_posterior_sample_differs_from_mean_and_both_are_deterministic(tiny_vae_dir, vae, images):
    mean_codec = VAECodec(tiny_vae_dir, sample_posterior=False, device="cpu")
    mean = mean_codec.encode(images)
    assert torch.equal(mean, mean_codec.encode(images))
    a = vae.encode(images, generator=torch.Generator().manual_seed(1))
    b = vae.encode(images, generator=torch.Generator().manual_seed(1))
    c = vae.encode(images, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert (a - mean).abs().mean() > 0.1


def test_vae_batches_give_the_same_latents_as_one_pass(tiny_vae_dir, images):
    one = VAECodec(tiny_vae_dir, sample_posterior=False, device="cpu", batch_size=64).encode(images)
    many = VAECodec(tiny_vae_dir, sample_posterior=False, device="cpu", batch_size=2).encode(images)
    torch.testing.assert_close(one, many)


def test_vae_describe_is_json_with_config_hash(tiny_vae_dir, vae, tmp_path):
    d = json.loads(json.dumps(vae.describe()))
    assert d["kind"] == "vae" and d["path"] == str(tiny_vae_dir.resolve())
    assert (d["scaling_factor"], d["shift_factor"], d["sample_posterior"]) == (VAE_SCALING, VAE_SHIFT, True)
    assert d["config_hash"] == vae.config_hash() and len(d["config_hash"]) == 16
    other = VAECodec(save_tiny_vae(tmp_path / "other", scaling_factor=0.5), device="cpu")
    assert other.config_hash() != vae.config_hash()


def test_vae_without_shift_factor_uses_zero(tmp_path):
    codec = VAECodec(save_tiny_vae(tmp_path / "noshift", shift_factor=None), device="cpu")
    assert codec.shift_factor == 0.0


# ---------------------------------------------------------------------------------------------
#  Bad inputs: clear messages
# ---------------------------------------------------------------------------------------------

def test_resolution_the_codec_cannot_produce_names_resolution_and_factor(vae):
    with pytest.raises(ValueError, match=r"resolution 33 .* downsample factor 2 .*32 or 34"):
        vae.latent_size(33)
    with pytest.raises(ValueError, match="not divisible by the codec's downsample factor 2"):
        vae.encode(np.zeros((1, 31, 32, 3), np.uint8))


def test_missing_vae_path_names_path_and_fix(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="AutoencoderKL.save_pretrained") as e:
        open_codec(f"vae:{missing}")
    assert str(missing) in str(e.value)


def test_folder_without_a_model_names_path_and_fix(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json.*diffusion_pytorch_model.safetensors"):
        open_codec(f"vae:{tmp_path / 'empty'}")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="noweights.*has no diffusion_pytorch_model weights"):
        open_codec(f"vae:{tmp_path / 'noweights'}")


def test_pipeline_folder_hints_at_vae_subfolder(tiny_vae_dir, tmp_path):
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "vae").symlink_to(tiny_vae_dir, target_is_directory=True)
    with pytest.raises(FileNotFoundError, match="did you mean vae:.*pipe/vae"):
        open_codec(f"vae:{tmp_path / 'pipe'}")


def test_unknown_codec_lists_choices():
    with pytest.raises(ValueError, match="choose one of pixel, vae:PATH"):
        open_codec("latent")
    with pytest.raises(ValueError, match="choose one of"):
        open_codec("vae:")


def test_bad_image_batch_is_explained():
    with pytest.raises(ValueError, match=r"uint8 images shaped \(B, H, W, 3\)"):
        PixelCodec().encode(np.zeros((32, 32, 3), np.uint8))
