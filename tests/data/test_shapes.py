"""The embedded shapes dataset: pixels, captions and ground truth agree; splits and seeds behave."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from workbench.data import shapes as S
from workbench.data.shapes import (
    COLOURS,
    EVAL_CATEGORIES,
    HELDOUT_COMBOS,
    SIZES,
    TEMPLATES,
    eval_prompts,
    make_scenes,
    parse_caption,
    render_scene,
    shapes_arrays,
    shapes_dataset,
)
from workbench.data.shapes.geometry import RING_MID
from workbench.data.shapes.vocabulary import GAP


def interior_pixel(obj: S.ShapeObject, resolution: int) -> tuple[int, int]:
    """(x, y) of a pixel fully inside ``obj``: its centre, or a point on the band for rings."""
    x, y = obj.cx * resolution, obj.cy * resolution
    if obj.shape == "ring":
        x += RING_MID * SIZES[obj.size] * resolution
    return int(x), int(y)


def colour_mask(image: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels with any colour (the background is an exact grey, R == G == B)."""
    image = image.astype(int)                                                   # (H, W, 3)
    return (image.max(axis=2) - image.min(axis=2)) > 2                           # (H, W)


def box_mask(obj: S.ShapeObject, resolution: int, grow: float = 1.0) -> np.ndarray:
    """(H, W) bool: pixels whose centre lies in ``obj``'s bbox grown by ``grow`` pixels."""
    x0, y0, x1, y1 = (v * resolution for v in obj.bbox)
    c = np.arange(resolution) + 0.5                                              # (R,)
    inx, iny = (c >= x0 - grow) & (c <= x1 + grow), (c >= y0 - grow) & (c <= y1 + grow)
    return iny[:, None] & inx[None, :]                                           # (R, R)


@pytest.mark.parametrize("resolution", [32, 64])
def test_single_object_pixels_match_ground_truth(resolution):
    images, scenes = shapes_arrays(120, resolution, seed=1, template_weights={"single": 1})
    for image, scene in zip(images, scenes):
        (obj,) = scene.objects
        x, y = interior_pixel(obj, resolution)
        assert np.abs(image[y, x].astype(int) - COLOURS[obj.colour]).max() <= 1, scene
        ys, xs = np.nonzero(colour_mask(image))                                  # (K,) each
        x0, y0, x1, y1 = (v * resolution for v in obj.bbox)
        lo, hi = np.array([xs.min(), ys.min()]) + 0.5, np.array([xs.max(), ys.max()]) + 0.5  # pixel centres
        assert np.abs(lo - (x0, y0)).max() <= 1.5 and np.abs(hi - (x1, y1)).max() <= 1.5, scene  # bbox is tight


@pytest.mark.parametrize("template", TEMPLATES)
def test_every_object_is_visible_and_colour_stays_in_its_box(template):
    resolution = 32
    images, scenes = shapes_arrays(80, resolution, seed=2, template_weights={template: 1})
    for image, scene in zip(images, scenes):
        boxes = np.zeros((resolution, resolution), dtype=bool)                    # (R, R)
        for obj in scene.objects:
            x, y = interior_pixel(obj, resolution)
            assert np.abs(image[y, x].astype(int) - COLOURS[obj.colour]).max() <= 1, scene
            boxes |= box_mask(obj, resolution)
        assert not (colour_mask(image) & ~boxes).any(), scene                    # nothing outside the boxes


def test_objects_never_overlap_and_stay_inside_the_image():
    for scene in make_scenes(500, seed=4):
        boxes = [o.bbox for o in scene.objects]
        for x0, y0, x1, y1 in boxes:
            assert 0 < x0 < x1 < 1 and 0 < y0 < y1 < 1
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert a[2] + GAP <= b[0] + 1e-9 or b[2] + GAP <= a[0] + 1e-9 or \
                       a[3] + GAP <= b[1] + 1e-9 or b[3] + GAP <= a[1] + 1e-9, scene


def test_object_sizes_are_recognisable_at_32px():
    for scene in make_scenes(300, seed=5):
        for obj in scene.objects:
            x0, y0, x1, y1 = (v * 32 for v in obj.bbox)
            across = max(x1 - x0, y1 - y0)
            assert (12 <= across <= 16) if obj.size == "large" else (7 <= across <= 9), obj


def test_captions_parse_back_to_the_ground_truth():
    for scene in make_scenes(600, seed=6):
        parsed = parse_caption(scene.caption)
        assert parsed is not None, scene.caption
        mentioned = Counter()
        for spec in parsed["objects"]:
            mentioned[(spec["colour"], spec["shape"])] += spec["count"]
            if spec["size"]:
                assert all(o.size == spec["size"] for o in scene.objects
                           if (o.colour, o.shape) == (spec["colour"], spec["shape"]))
        assert mentioned == Counter((o.colour, o.shape) for o in scene.objects), scene.caption
        assert parsed["relation"] == scene.relation


def test_position_captions_match_the_geometry():
    scenes = make_scenes(300, seed=7, template_weights={"position": 1})
    assert {s.relation[1] for s in scenes} == {"left_of", "right_of", "above", "below"}
    for scene in scenes:
        i, rel, j = scene.relation
        a, b = scene.objects[i], scene.objects[j]
        dx, dy = a.cx - b.cx, a.cy - b.cy                     # subject minus reference; y grows down
        along, across = {"left_of": (-dx, dy), "right_of": (dx, dy), "above": (-dy, dx), "below": (dy, dx)}[rel]
        assert along > 0 and abs(across) <= 0.5 * along + 1e-9, scene.caption


def test_heldout_combos_never_appear_in_train_or_val():
    for split in ("train", "val"):
        seen = {(o.colour, o.shape) for s in make_scenes(3000, split=split, seed=8) for o in s.objects}
        assert not seen & set(HELDOUT_COMBOS)
        assert len(seen) == len(COLOURS) * len(S.SHAPES) - len(HELDOUT_COMBOS)   # every other combo shows up


def test_eval_prompts_cover_categories_and_heldout_combos():
    prompts = eval_prompts()
    assert prompts == eval_prompts()                                          # fixed
    assert {p.category for p in prompts} == set(EVAL_CATEGORIES)
    heldout = [p for p in prompts if p.heldout]
    assert {(o["colour"], o["shape"]) for p in heldout for o in p.objects} >= set(HELDOUT_COMBOS)
    for p in prompts:
        parsed = parse_caption(p.prompt)
        assert [(o["colour"], o["shape"], o["count"]) for o in parsed["objects"]] == \
               [(o["colour"], o["shape"], o["count"]) for o in p.objects]
        assert parsed["relation"] == p.relation
        assert p.heldout == any((o["colour"], o["shape"]) in HELDOUT_COMBOS for o in p.objects)


def test_seeds_are_deterministic_and_splits_disjoint():
    a_images, a_scenes = shapes_arrays(40, 32, seed=9)
    b_images, b_scenes = shapes_arrays(40, 32, seed=9)
    assert a_scenes == b_scenes and np.array_equal(a_images, b_images)
    _, tail = shapes_arrays(10, 32, seed=9, start=30)
    assert tail == a_scenes[30:]                                              # any scene alone, by index
    other = make_scenes(40, seed=10)
    val = make_scenes(40, split="val", seed=9)
    assert not set(a_scenes) & set(other) and not set(a_scenes) & set(val)
    assert {S.scene_key("train", 9, i) for i in range(40)}.isdisjoint({S.scene_key("val", 9, i) for i in range(40)})


def test_template_mixture_is_a_parameter():
    counts = Counter(s.template for s in make_scenes(2000, seed=11))
    assert 0.35 < counts["single"] / 2000 < 0.45 and set(counts) == set(TEMPLATES)
    only = Counter(s.template for s in make_scenes(200, seed=11, template_weights={"single": 1, "count": 1}))
    assert set(only) == {"single", "count"}
    counts = Counter(len(s.objects) for s in make_scenes(2000, seed=11))
    assert set(counts) == {1, 2, 3, 4}
    with pytest.raises(ValueError, match="unknown templates"):
        make_scenes(1, template_weights={"triple": 1})
    with pytest.raises(ValueError, match="positive sum"):
        make_scenes(1, template_weights={"single": 0})


def test_rendering_is_resolution_independent():
    (scene,) = make_scenes(1, seed=12, template_weights={"pair": 1})
    small, big = render_scene(scene, 32).astype(float), render_scene(scene, 128).astype(float)
    down = big.reshape(32, 4, 32, 4, 3).mean(axis=(1, 3))                     # (32, 32, 3)
    assert np.abs(small - down).mean() < 3


def test_shapes_dataset_is_a_datasets_dataset():
    import datasets

    ds = shapes_dataset(8, resolution=32, split="val", seed=1)
    assert isinstance(ds, datasets.Dataset) and len(ds) == 8
    assert set(ds.column_names) == {"image", "caption", "key", "objects", "template"}
    row = ds[3]
    scene = make_scenes(1, split="val", seed=1, start=3)[0]
    assert row["caption"] == scene.caption and row["key"] == "shapes-val-1-00000003"
    assert row["image"].size == (32, 32) and np.array_equal(np.asarray(row["image"]), render_scene(scene, 32))
    assert json.loads(row["objects"]) == [o.to_dict() for o in scene.objects]
    streamed = list(shapes_dataset(8, resolution=32, split="val", seed=1, streaming=True))
    assert [r["caption"] for r in streamed] == ds["caption"]
