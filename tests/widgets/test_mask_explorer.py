"""MaskExplorer: the kept/dropped patch grid, the noisy input and masked vs unmasked predictions follow the controls."""

import numpy as np
import pytest
import torch

from workbench.data.shapes import shapes_arrays
from workbench.diffusion.edm import precondition
from workbench.widgets import MaskExplorer, patch_grid_image
from workbench.widgets.common import default_text_encoder

from . import one_torch_thread, tiny_model  # noqa: F401
from .png import png_size

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture
def explorer(model):
    return MaskExplorer(model, text_encoder=False, mask_ratio=0.75, sigma=1.0, seed=0, sigma_data=0.9)


def test_default_image_is_a_shapes_scene_at_the_model_resolution(model):
    explorer = MaskExplorer(model, text_encoder=default_text_encoder(), sigma_data=0.9)
    images, scenes = shapes_arrays(1, resolution=16, split="val")
    assert (explorer.pixels == images[0]).all()
    assert explorer.caption_text.value == scenes[0].caption
    assert explorer.caption_states.abs().sum() > 0 and explorer.caption_mask.any()
    assert png_size(explorer.image_view.value) == (128, 128)          # 16 px shown 8x


def test_mask_ratio_slider_changes_the_patch_grid_and_the_masked_prediction(explorer):
    grid, masked, unmasked = explorer.patch_view.value, explorer.masked_view.value, explorer.unmasked_view.value
    masked_tensor = explorer.denoised_masked.clone()
    explorer.mask_ratio.value = 0.25
    assert explorer.patch_view.value != grid
    assert explorer.masked_view.value != masked
    assert not torch.equal(explorer.denoised_masked, masked_tensor)
    assert explorer.unmasked_view.value == unmasked                  # the unmasked prediction ignores the ratio


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.75, 0.9])
def test_kept_patches_number_int_T_times_one_minus_r(explorer, ratio):
    explorer.mask_ratio.value = ratio
    tokens = (16 // 2) ** 2
    assert explorer.num_tokens == tokens
    assert explorer.keep.shape == (tokens,)
    assert explorer.num_kept == explorer.keep.sum() == int(tokens * (1 - ratio))
    assert f"kept <b>{int(tokens * (1 - ratio))}</b> of {tokens}" in explorer.info.value


def test_masked_prediction_is_precondition_with_a_seeded_mask(explorer, model):
    explorer.seed.value = 3
    noise = torch.randn(explorer.x0.shape, generator=torch.Generator().manual_seed(3))
    x = explorer.x0 + 1.0 * noise
    with torch.no_grad():
        masked, keep = precondition(model, x, 1.0, explorer.caption_states, None, sigma_data=explorer.sigma_data,
                                    mask_ratio=0.75, generator=torch.Generator().manual_seed(3))
        unmasked, _ = precondition(model, x, 1.0, explorer.caption_states, None, sigma_data=explorer.sigma_data)
    torch.testing.assert_close(explorer.denoised_masked, masked)
    torch.testing.assert_close(explorer.denoised_unmasked, unmasked)
    assert (explorer.keep == keep[0].numpy()).all()


def test_zero_mask_ratio_predicts_the_same_as_unmasked(explorer):
    explorer.mask_ratio.value = 0.0
    assert explorer.keep.all()
    torch.testing.assert_close(explorer.denoised_masked, explorer.denoised_unmasked)


def test_seed_redraws_the_mask_and_the_noise(explorer):
    keep, noisy = explorer.keep.copy(), explorer.noisy_view.value
    explorer.seed.value = 1
    assert not (explorer.keep == keep).all()
    assert explorer.noisy_view.value != noisy
    assert explorer.num_kept == int(64 * 0.25)


def test_sigma_slider_sets_the_noise_level_of_the_input(explorer):
    explorer.sigma.value = 0.01
    low = float((explorer.noisy - explorer.x0).std())
    low_bytes = explorer.noisy_view.value
    explorer.sigma.value = 10.0
    high = float((explorer.noisy - explorer.x0).std())
    assert explorer.noisy_view.value != low_bytes
    assert high / low == pytest.approx(1000.0, rel=1e-3)


def test_patch_grid_keeps_kept_patches_and_greys_dropped_ones(explorer):
    explorer.mask_ratio.value = 0.5
    scale, side = explorer.scale, explorer.patch_px * explorer.scale
    image = patch_grid_image(explorer.pixels, explorer.keep, explorer.patch_px, scale)
    big = explorer.pixels.repeat(scale, 0).repeat(scale, 1)
    for t, kept in enumerate(explorer.keep):
        r, c = divmod(t, 16 // explorer.patch_px)
        inner = (slice(r * side + 1, (r + 1) * side), slice(c * side + 1, (c + 1) * side))  # inside the border
        if kept:
            assert (image[inner] == big[inner]).all()
        else:
            assert (image[inner] != big[inner]).any()


def test_image_file_and_caption_edits(model, tmp_path):
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    explorer = MaskExplorer(model, tmp_path / "photo.png", text_encoder=default_text_encoder(), caption="a cat",
                            sigma_data=0.9)
    assert explorer.pixels.shape == (16, 16, 3)
    states, before = explorer.caption_states.clone(), explorer.masked_view.value
    explorer.caption_text.value = "two blue squares"
    assert not torch.equal(explorer.caption_states, states)
    assert explorer.masked_view.value != before


def test_zero_captions_without_a_text_encoder(explorer):
    assert not explorer.caption_states.any() and explorer.caption_mask is None
    assert explorer.caption_text.disabled


def test_latent_models_use_the_given_codec():
    class HalfCodec:                                    # a stand-in VAE: 4 channels, 2x down
        channels, downsample = 4, 2

        def encode(self, images):
            x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1            # (B, 3, H, W)
            x = torch.nn.functional.avg_pool2d(x, 2)                                        # (B, 3, H/2, W/2)
            return torch.cat([x, x.mean(1, keepdim=True)], dim=1)                           # (B, 4, H/2, W/2)

        def decode(self, latents):
            x = latents[:, :3].repeat_interleave(2, 2).repeat_interleave(2, 3)             # (B, 3, H, W)
            return ((x + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()

    model = tiny_model(in_channels=4, sample_size=8)
    with pytest.raises(ValueError, match="in_channels=4"):
        MaskExplorer(model, text_encoder=False, sigma_data=0.9)
    explorer = MaskExplorer(model, text_encoder=False, codec=HalfCodec(), sigma_data=0.9)
    assert explorer.resolution == 16 and explorer.patch_px == 4 and explorer.x0.shape == (1, 4, 8, 8)
    assert explorer.num_kept == int(16 * 0.25)
    assert png_size(explorer.masked_view.value) == (128, 128)


def test_shows_itself_in_a_notebook(explorer):
    bundle = explorer._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == explorer.widget.model_id


def test_a_bare_model_needs_its_sigma_data():
    with pytest.raises(ValueError, match="pass sigma_data=.*0.5 for the demo"):
        MaskExplorer(tiny_model(), text_encoder=False)


def test_errors_cover_all_and_kept_pixels_and_equal_the_direct_computation(explorer):
    errors = explorer.errors()
    assert (errors["kept_patches"], errors["patches"], errors["mask_ratio"]) == (explorer.num_kept, 64, 0.75)
    assert errors["mse_unmasked"] == pytest.approx(float(((explorer.denoised_unmasked - explorer.x0) ** 2).mean()))
    keep = torch.as_tensor(explorer.keep).reshape(8, 8).repeat_interleave(2, 0).repeat_interleave(2, 1)  # (16, 16)
    kept = ((explorer.denoised_masked - explorer.x0) ** 2).mean(dim=(0, 1))[keep]
    assert errors["mse_masked_kept"] == pytest.approx(float(kept.mean()))
    assert not any("dropped" in key for key in errors)          # equal by construction: not reported


def test_a_comparison_links_the_sliders_and_its_table_follows_them(model):
    from workbench.widgets import MaskComparison

    a, b = (MaskExplorer(model, text_encoder=False, mask_ratio=0.75, sigma=1.0, sigma_data=0.5) for _ in range(2))
    comparison = MaskComparison({"a": a, "b": b})
    before = comparison.widget.value
    a.sigma.value, a.mask_ratio.value, a.seed.value = 2.0, 0.5, 3
    assert (b.sigma.value, b.mask_ratio.value, b.seed.value) == (2.0, 0.5, 3)
    assert [r["sigma"] for r in comparison.rows()] == [2.0, 2.0] and comparison.widget.value != before
    assert f"{comparison.rows()[1]['mse_unmasked']:.4g}" in comparison.widget.value
    with pytest.raises(ValueError, match="at least two explorers"):
        MaskComparison({"a": a})
