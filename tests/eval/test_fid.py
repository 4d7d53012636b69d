"""FID-proxy: torchmetrics' FID equals the direct formula, separates real from noise, caches the reference."""

import numpy as np
import pytest
import torch

from workbench.data.shapes import shapes_arrays
from workbench.eval import fid as fidmod
from workbench.eval.fid import PROXY_LABEL, ShapesFeatures, fid_proxy, fid_proxy_metric, inception_fid_metric


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The Fréchet distance between two Gaussians, directly with numpy/scipy (the reference the metric is tested
    against)."""
    from scipy import linalg

    covmean = linalg.sqrtm(sigma1 @ sigma2)
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def features():
    return ShapesFeatures()


def test_torchmetrics_fid_equals_the_direct_frechet_distance(features):
    real, _ = shapes_arrays(400, resolution=32, split="val", seed=0)
    fake, _ = shapes_arrays(400, resolution=32, split="train", seed=3)
    fake = fake.copy()
    fake[::3] = np.clip(fake[::3].astype(int) + 40, 0, 255).astype(np.uint8)   # a visibly different distribution
    metric = fid_proxy_metric(32, n_reference=400, features=features, use_cache=False)
    metric.update(torch.from_numpy(fake).permute(0, 3, 1, 2), real=False)
    ours = float(metric.compute())
    f_real = features(torch.from_numpy(real).permute(0, 3, 1, 2)).double().numpy()
    f_fake = features(torch.from_numpy(fake).permute(0, 3, 1, 2)).double().numpy()
    direct = frechet_distance(f_real.mean(0), np.cov(f_real, rowvar=False),
                              f_fake.mean(0), np.cov(f_fake, rowvar=False))
    assert direct > 0.1
    assert abs(ours - direct) / direct < 1e-3


def test_fid_proxy_separates_real_scenes_from_noise_and_from_an_untrained_model(features):
    from workbench import MicroDiT, sample
    from workbench.data.codecs import PixelCodec

    other_real, _ = shapes_arrays(200, resolution=32, split="train", seed=5)
    noise = np.random.default_rng(0).integers(0, 256, (200, 32, 32, 3), dtype=np.uint8)
    torch.manual_seed(0)
    untrained = MicroDiT.from_preset("nano", depth=2, sample_size=32)
    caption = torch.randn(200, 8, 384)
    latents = sample(untrained, caption, steps=3, cfg_scale=1.0, seed=0)
    untrained_images = PixelCodec().decode(latents)
    real = fid_proxy(other_real, 32, n_reference=600)     # ~3: mostly the small-sample bias of FID
    assert fid_proxy(noise, 32, n_reference=600) > 10 * real
    assert fid_proxy(untrained_images, 32, n_reference=600) > 10 * real


def test_reference_statistics_are_cached_per_resolution(features):
    fake, _ = shapes_arrays(64, resolution=64, split="train", seed=9)
    first = fid_proxy(fake, 64, n_reference=200)
    files = list(fidmod.cache_dir().glob("*.pt"))
    assert len(files) == 1 and "r64" in files[0].name and "n200" in files[0].name
    assert fid_proxy(fake, 64, n_reference=200) == pytest.approx(first, rel=1e-9)
    fid_proxy(shapes_arrays(64, resolution=32, split="train", seed=9)[0], 32, n_reference=200)
    assert len(list(fidmod.cache_dir().glob("*.pt"))) == 2


def test_the_proxy_is_labelled_as_not_comparable_with_published_fid():
    assert "not comparable with published FID" in PROXY_LABEL


def test_inception_fid_without_weights_says_what_to_provide(tmp_path):
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05"):
        inception_fid_metric(None)
    with pytest.raises(FileNotFoundError, match="not found"):
        inception_fid_metric(tmp_path / "missing.pth")
    weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    weights.write_bytes(b"x")
    try:
        import torch_fidelity  # noqa: F401
    except Exception:
        with pytest.raises(ModuleNotFoundError, match="torch-fidelity"):
            inception_fid_metric(weights)


def test_fid_proxy_rejects_images_that_are_not_uint8_batches():
    with pytest.raises(ValueError, match="uint8"):
        fid_proxy(np.zeros((4, 32, 32, 3), np.float32))
