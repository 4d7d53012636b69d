"""The shapes detector: exact on ground-truth renders, robust to mild degradation, clear when weights are missing."""

import numpy as np
import pytest

from workbench.data.shapes import COLOURS, Scene, ShapeObject, render_scene
from workbench.eval.detector import (Detector, colour_coverage, degrade, detector_accuracy, find_components,
                                     load_classifier, relation_holds, train_classifier)


@pytest.fixture(scope="module")
def detector():
    return Detector()


@pytest.mark.parametrize("resolution", [32, 64])
def test_detector_is_at_least_98_percent_right_on_ground_truth_renders(detector, resolution):
    acc = detector_accuracy(detector, n=400, resolution=resolution, split="val")
    assert acc["objects"] > 600
    for key in ("shape", "colour", "count", "relation"):
        assert acc[key] >= 0.98, (key, acc)


def test_detector_degrades_gracefully_under_mild_blur_and_noise(detector):
    clean = detector_accuracy(detector, n=150, resolution=64)
    blurred = detector_accuracy(detector, n=150, resolution=64, blur=0.8)
    noisy = detector_accuracy(detector, n=150, resolution=64, noise=10.0)
    assert blurred["shape"] >= 0.9 and noisy["shape"] >= 0.9
    heavy = detector_accuracy(detector, n=150, resolution=32, blur=2.0)
    assert heavy["shape"] < clean["shape"]          # the curve really measures something


def test_antialiased_edge_pixels_keep_their_colour():
    grey, orange = np.array([220.0] * 3), np.array(COLOURS["orange"], dtype=float)
    img = np.full((8, 8, 3), 220, np.uint8)
    img[2:6, 2:6] = orange
    img[2:6, 6] = np.round(0.5 * orange + 0.5 * grey)   # a half-covered edge: nearest palette colour is yellow
    label, alpha = colour_coverage(img)
    assert list(COLOURS)[label[3, 6]] == "orange"
    assert abs(alpha[3, 6] - 0.5) < 0.05 and alpha[0, 0] < 0.05 and alpha[3, 3] > 0.95


def test_specks_are_not_objects_and_objects_come_largest_first(detector):
    scene = Scene((ShapeObject("circle", "red", "small", 0.25, 0.3), ShapeObject("square", "blue", "large", 0.7, 0.65)),
                  "a red circle and a blue square", "pair")
    img = render_scene(scene, 64)
    img[2, 60] = COLOURS["green"]                        # one stray pixel
    found = detector(img)
    assert [(d.colour, d.shape) for d in found] == [("blue", "square"), ("red", "circle")]
    assert found[0].area > found[1].area
    assert abs(found[1].cx - 0.25) < 0.02 and abs(found[1].cy - 0.3) < 0.02
    assert len(find_components(img)) == 2


def test_an_empty_image_has_no_objects(detector):
    assert detector(np.full((32, 32, 3), 215, np.uint8)) == []


def test_relation_needs_the_right_side_and_a_dominant_axis():
    assert relation_holds((0.2, 0.5), (0.7, 0.5), "left_of")
    assert not relation_holds((0.2, 0.5), (0.7, 0.5), "right_of")
    assert relation_holds((0.5, 0.1), (0.5, 0.8), "above")
    assert not relation_holds((0.4, 0.2), (0.5, 0.9), "left_of")   # mostly above, barely left


def test_degrade_changes_pixels_as_asked():
    img = render_scene(Scene((ShapeObject("star", "pink", "large", 0.5, 0.5),), "a pink star", "single"), 32)
    assert (degrade(img) == img).all()
    assert np.abs(degrade(img, noise=20.0).astype(int) - img).mean() > 5
    assert degrade(img, blur=1.0).std() < img.std()
    assert degrade(img, jpeg=20).shape == img.shape


def test_classifier_training_learns_the_shapes_from_renders():
    model, report = train_classifier(n_scenes=2000, epochs=4, batch=64, progress=False)
    assert report["crops"] > 2000
    acc = detector_accuracy(Detector(model), n=150, resolution=64)
    assert acc["shape"] > 0.8, acc


def test_missing_classifier_weights_name_the_command_that_makes_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="workbench train-detector"):
        load_classifier(tmp_path / "nope.safetensors")
