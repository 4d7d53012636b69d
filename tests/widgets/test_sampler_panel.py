"""SamplerPanel: Generate runs off the kernel thread with a live preview, every sampler works, Save writes a PNG."""

import numpy as np
import pytest
import torch

from workbench.diffusion import SAMPLERS, EDMConfig, sample
from workbench.images import display_scale, image_grid, labelled_grid
from workbench.widgets import SamplerPanel
from workbench.widgets.common import default_text_encoder

from . import Broken, Gated, one_torch_thread, tiny_model  # noqa: F401
from .png import png_size

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture
def panel(model, tmp_path):
    return SamplerPanel(model, edm=EDMConfig(), text_encoder=False, steps=3, batch_size=3, cfg_scale=2.0,
                        out_dir=tmp_path)


def test_generate_click_previews_every_step_and_shows_a_grid_of_the_batch(panel):
    previews = []
    panel.preview.observe(lambda change: previews.append(change["new"]), names="value")
    panel.generate_button.click()                          # the click handler only starts the thread
    assert panel.join(timeout=60)
    assert panel.error is None
    assert len(previews) >= 3 and panel.preview_updates == 3
    assert len(set(previews)) == len(previews)              # each step shows a new estimate
    assert panel.images.shape == (3, 16, 16, 3) and panel.images.dtype == np.uint8
    h, w = image_grid(panel.images).shape[:2]
    assert png_size(panel.grid.value) == (w * display_scale(16), h * display_scale(16))
    assert panel.progress.value == panel.progress.max == 3
    assert not panel.generate_button.disabled and not panel.save_button.disabled


def test_output_is_the_package_sample_of_the_controls(panel, model):
    panel.seed.value, panel.sampler.value, panel.cfg_scale.value = 5, "euler", 3.0
    panel.generate(wait=True)
    caption = torch.zeros(3, 77, 384)
    expected = sample(model, caption, None, steps=3, cfg_scale=3.0, seed=5, sampler="euler", latent_size=16,
                      edm=EDMConfig())
    torch.testing.assert_close(panel.latents, expected)


def test_changing_the_seed_changes_the_samples(panel):
    panel.generate(wait=True)
    first, grid = panel.images.copy(), panel.grid.value
    panel.seed.value = 1
    panel.generate(wait=True)
    assert not (panel.images == first).all() and panel.grid.value != grid
    panel.seed.value = 0
    panel.generate(wait=True)
    assert (panel.images == first).all()


def test_batch_size_sets_the_number_of_samples(panel):
    panel.batch_size.value = 5
    panel.generate(wait=True)
    assert panel.images.shape[0] == 5
    h, w = image_grid(panel.images).shape[:2]
    assert png_size(panel.grid.value) == (w * 8, h * 8)


def test_sampler_dropdown_offers_every_registered_sampler(panel):
    assert list(panel.sampler.options) == list(SAMPLERS)
    assert {"heun", "euler", "edm-stochastic", "diffusers-euler", "diffusers-dpmpp"} <= set(panel.sampler.options)
    assert panel.sampler.value == "heun"


def test_option_boxes_follow_the_selected_sampler(panel):
    assert set(panel.options) == {"s_churn", "s_tmin", "s_tmax", "s_noise"}
    assert all(box.layout.display == "none" for box in panel.options.values())
    assert panel.settings()["sampler_options"] == {}
    panel.sampler.value = "edm-stochastic"
    assert all(box.layout.display is None for box in panel.options.values())
    assert "Algorithm 2" in panel.sampler_help.value
    panel.options["s_churn"].value = 0.0
    assert panel.settings()["sampler_options"] == {"s_churn": 0.0, "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.003}


def test_edm_stochastic_panel_output_is_the_package_sample(model, tmp_path):
    panel = SamplerPanel(model, edm=EDMConfig(), text_encoder=False, steps=3, batch_size=2, sampler="edm-stochastic",
                         sampler_options={"s_churn": 30.0, "s_tmin": 0.0}, out_dir=tmp_path)
    assert panel.options["s_churn"].value == 30.0
    panel.generate(wait=True)
    expected = sample(model, torch.zeros(2, 77, 384), None, steps=3, cfg_scale=3.0, seed=0, sampler="edm-stochastic",
                      sampler_options={"s_churn": 30.0, "s_tmin": 0.0}, latent_size=16, edm=EDMConfig())
    torch.testing.assert_close(panel.latents, expected)
    heun = sample(model, torch.zeros(2, 77, 384), None, steps=3, cfg_scale=3.0, seed=0, latent_size=16,
                  edm=EDMConfig())
    assert not torch.allclose(panel.latents, heun)            # the churn changed the samples


def test_an_option_the_sampler_does_not_take_is_refused(model):
    with pytest.raises(ValueError, match="'heun' has no option 's_churn'"):
        SamplerPanel(model, edm=EDMConfig(), text_encoder=False, sampler_options={"s_churn": 1.0})


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_runs(panel, name):
    assert name in panel.sampler.options
    panel.sampler.value = name
    panel.generate(wait=True)
    assert panel.preview_updates >= 3 and panel.images.shape == (3, 16, 16, 3)
    assert name in panel.save_path.value


def test_save_writes_the_grid_as_png(panel, tmp_path):
    panel.generate(wait=True)
    panel.save_button.click()
    path = tmp_path / "a_red_circle_heun_seed0.png"
    assert panel.save_path.value == str(path) and path.is_file() and str(path) in panel.status.value
    labelled = labelled_grid(panel.images, ["a red circle"] * 3)               # each tile over its prompt
    assert png_size(path.read_bytes()) == (labelled.shape[1], labelled.shape[0])
    panel.save_path.value = str(tmp_path / "sub" / "mine.png")
    panel.save_button.click()
    assert (tmp_path / "sub" / "mine.png").is_file() and "saved" in panel.status.value


def test_save_before_generate_says_so_in_the_panel(panel):
    assert panel.save_button.disabled
    panel._on_save()
    assert "Generate" in panel.status.value
    with pytest.raises(ValueError, match="Generate"):
        panel.save()


def test_generate_does_not_block_and_runs_one_generation_at_a_time(model):
    gated = Gated(model)
    panel = SamplerPanel(gated, edm=EDMConfig(), text_encoder=False, steps=2, batch_size=1)
    panel.generate_button.click()                          # returns while the model waits at its gate
    assert panel.running and panel.generate_button.disabled
    thread = panel._thread
    assert panel.generate() is thread                      # a second click does not start another run
    gated.gate.set()
    assert panel.join(timeout=60) and not panel.running
    assert panel.images.shape == (1, 16, 16, 3)


def test_an_error_is_shown_and_reraised_by_join(model):
    panel = SamplerPanel(Broken(model), edm=EDMConfig(), text_encoder=False, steps=2, batch_size=1)
    panel.generate_button.click()
    with pytest.raises(RuntimeError, match="the model broke"):
        panel.join(timeout=60)
    assert "the model broke" in panel.status.value and not panel.generate_button.disabled


def test_prompt_goes_through_the_text_encoder(model):
    panel = SamplerPanel(model, edm=EDMConfig(), steps=2, batch_size=2, cfg_scale=2.0)
    assert panel.text_encoder is default_text_encoder()
    panel.generate(wait=True)
    red = panel.latents.clone()
    panel.prompt.value = "three blue stars"
    panel.generate(wait=True)
    assert not torch.equal(panel.latents, red)


def test_unknown_sampler_is_refused(model):
    with pytest.raises(ValueError, match="unknown sampler"):
        SamplerPanel(model, edm=EDMConfig(), text_encoder=False, sampler="ddim")


def test_shows_itself_in_a_notebook(panel):
    assert "application/vnd.jupyter.widget-view+json" in panel._repr_mimebundle_()


def test_a_bare_model_needs_its_sigma_data():
    with pytest.raises(ValueError, match=r"pass edm=EDMConfig\(sigma_data=...\)"):
        SamplerPanel(tiny_model(), text_encoder=False)
