"""Shared widget helpers: PNG bytes, image inputs, codec and text-encoder checks, notebook display."""

import io

import numpy as np
import pytest
from PIL import Image

from workbench.data.codecs import PixelCodec
from workbench.images import display_scale, grid_png, image_grid, png_bytes
from workbench.widgets.common import (DisplayMixin, check_codec, embed_captions, load_image, resolve_codec,
                                      resolve_text_encoder)

from . import tiny_model
from .png import png_size


def test_png_bytes_round_trip_with_nearest_upscale():
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    data = png_bytes(image, scale=3)
    assert png_size(data) == (21, 15)
    decoded = np.array(Image.open(io.BytesIO(data)))
    assert (decoded[::3, ::3] == image).all()


def test_png_bytes_rejects_float_images():
    with pytest.raises(ValueError, match="uint8"):
        png_bytes(np.zeros((4, 4, 3), dtype=np.float32))


def test_grid_png_has_the_size_of_image_grid_times_the_display_scale():
    images = np.zeros((5, 16, 16, 3), dtype=np.uint8)
    h, w = image_grid(images).shape[:2]
    assert png_size(grid_png(images)) == (w * display_scale(16), h * display_scale(16))


def test_png_size_rejects_non_png():
    with pytest.raises(ValueError):
        png_size(b"GIF89a....")


def test_load_image_from_path_pil_and_arrays(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    from_path = load_image(tmp_path / "photo.png", 16)
    from_pil = load_image(Image.fromarray(pixels), 16)
    from_array = load_image(pixels, 16)
    from_float = load_image(pixels.astype(np.float32) / 255, 16)
    for out in (from_path, from_pil, from_array, from_float):
        assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert (from_path == from_pil).all() and (from_pil == from_array).all() and (from_array == from_float).all()
    assert load_image(pixels[..., 0], 16).shape == (16, 16, 3)          # grey becomes RGB


def test_load_image_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png", 16)
    with pytest.raises(ValueError, match="shaped"):
        load_image(np.zeros((2, 4, 4, 3), dtype=np.uint8), 16)


def test_codec_and_text_encoder_must_fit_the_model():
    model = tiny_model()
    assert isinstance(resolve_codec(None), PixelCodec)
    check_codec(model, resolve_codec("pixel"))
    with pytest.raises(ValueError, match="in_channels=4"):
        check_codec(tiny_model(in_channels=4), PixelCodec())

    class Encoder:
        dim = 512
    with pytest.raises(ValueError, match="caption_dim=384"):
        resolve_text_encoder(Encoder(), model)
    assert resolve_text_encoder(False, model) is None


def test_zero_captions_without_a_text_encoder():
    states, mask = embed_captions(None, ["a", "b"], caption_dim=384)
    assert states.shape == (2, 77, 384) and not states.any() and mask is None


def test_display_delegates_to_the_ipywidget():
    import ipywidgets as W

    class Shown(DisplayMixin):
        widget = W.VBox([W.Label("hi")])

    bundle = Shown()._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == Shown.widget.model_id
