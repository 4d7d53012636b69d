"""The compositional score: perfect on ground truth, partial credit on near misses, reproducible protocol."""

import numpy as np
import pytest

from workbench.data.shapes import EVAL_CATEGORIES, EvalPrompt, Scene, ShapeObject, eval_prompts, render_scene
from workbench.eval.compositional import named_objects, score_image, score_images, summarise, worst_failures
from workbench.eval.detector import Detection, Detector


def ground_truth_scene(prompt: EvalPrompt, seed: int = 0) -> Scene:
    """A scene that satisfies ``prompt`` exactly, laid out like the training scenes (what a correct image shows).

    Render it with ``render_scene(scene, resolution)``; the scorer must call it correct.
    """
    import random

    from workbench.data.shapes import place_grid, place_pair, place_single

    rng = random.Random(f"ground-truth/{seed}/{prompt.prompt}")
    named = named_objects(prompt)
    sizes = ["small" if len(named) > 2 else rng.choice(["small", "large"]) for _ in named]
    items = [(n["shape"], z) for n, z in zip(named, sizes)]
    if len(named) == 1:
        centres = [place_single(rng, *items[0])]
    elif len(named) == 2:
        rel = prompt.relation[1] if prompt.relation else None
        axis = (0 if rel in ("left_of", "right_of") else 1) if rel else rng.randrange(2)
        centres = place_pair(rng, items, axis, dominant=rel is not None)
        if rel in ("right_of", "below"):          # place_pair puts the first item first along the axis
            centres.reverse()
    else:
        centres = place_grid(rng, items)
    objects = tuple(ShapeObject(n["shape"], n["colour"], z, *xy) for n, z, xy in zip(named, sizes, centres))
    return Scene(objects, prompt.prompt, "eval", prompt.relation)


@pytest.fixture(scope="module")
def detector():
    return Detector()


def det(shape, colour, cx=0.5, cy=0.5, area=0.05):
    return Detection(shape, colour, cx, cy, (cx - 0.1, cy - 0.1, cx + 0.1, cy + 0.1), area, 0.9)


def prompt(text):
    return next(p for p in eval_prompts() if p.prompt == text)


@pytest.mark.parametrize("resolution", [32, 64])
def test_ground_truth_images_of_every_prompt_score_perfectly(detector, resolution):
    prompts = eval_prompts()
    images = [render_scene(ground_truth_scene(p, seed), resolution) for p in prompts for seed in range(2)]
    results = score_images(images, [i for i in range(len(prompts)) for _ in range(2)], None, prompts, detector)
    wrong = [(r.prompt, r.attributes) for r in results if not r.correct]
    assert not wrong
    scores = summarise(results)
    assert scores["overall"] == 1.0 and scores["heldout"] == 1.0
    assert scores["single_object_shape"] == scores["single_object_colour"] == 1.0


def test_right_colour_wrong_shape_gets_colour_credit_only():
    p = next(p for p in eval_prompts() if p.category == "single_object")
    wrong_shape = next(s for s in ("circle", "square") if s != p.objects[0]["shape"])
    correct, attrs = score_image(p, [det(wrong_shape, p.objects[0]["colour"])])
    assert not correct
    assert attrs == {"colour": 1.0, "shape": 0.0, "count": 1.0, "position": None}


def test_counting_needs_exactly_n_of_the_shape():
    p = next(p for p in eval_prompts() if p.category == "counting" and p.objects[0]["count"] == 3)
    shape, colour = p.objects[0]["shape"], p.objects[0]["colour"]
    three = [det(shape, colour, 0.2 + 0.3 * i) for i in range(3)]
    assert score_image(p, three)[0]
    assert not score_image(p, three[:2])[0]
    correct, attrs = score_image(p, three + [det(shape, colour, 0.9, 0.9)])
    assert not correct and attrs["count"] == 0.0 and attrs["shape"] == 1.0


def test_position_checks_the_side_of_the_named_objects():
    p = next(p for p in eval_prompts() if p.category == "position" and p.relation[1] == "left_of")
    a, b = p.objects
    left = [det(a["shape"], a["colour"], 0.2), det(b["shape"], b["colour"], 0.8)]
    right = [det(a["shape"], a["colour"], 0.8), det(b["shape"], b["colour"], 0.2)]
    assert score_image(p, left) == (True, {"colour": 1.0, "shape": 1.0, "count": 1.0, "position": 1.0})
    correct, attrs = score_image(p, right)
    assert not correct and attrs["position"] == 0.0 and attrs["colour"] == 1.0


def test_colour_attribution_needs_each_shape_in_its_own_colour():
    p = next(p for p in eval_prompts() if p.category == "colour_attribution" and not p.heldout)
    a, b = p.objects
    assert score_image(p, [det(a["shape"], a["colour"], 0.2), det(b["shape"], b["colour"], 0.8)])[0]
    swapped = [det(a["shape"], b["colour"], 0.2), det(b["shape"], a["colour"], 0.8)]
    correct, attrs = score_image(p, swapped)
    assert not correct and attrs["colour"] < 1.0 or attrs["shape"] < 1.0


def test_an_empty_image_scores_zero_everywhere():
    for p in eval_prompts():
        correct, attrs = score_image(p, [])
        assert not correct and attrs["colour"] == attrs["shape"] == 0.0


def test_overall_is_the_mean_over_categories_and_heldout_is_apart(detector):
    prompts = eval_prompts()
    blank = np.full((32, 32, 3), 220, np.uint8)
    images, idx = [], []
    for i, p in enumerate(prompts):      # right images for single_object, blanks elsewhere
        images.append(render_scene(ground_truth_scene(p), 32) if p.category == "single_object" else blank)
        idx.append(i)
    scores = summarise(score_images(images, idx, None, prompts, detector))
    assert scores["categories"]["single_object"] == 1.0
    assert scores["overall"] == pytest.approx(1.0 / len(EVAL_CATEGORIES), abs=1e-4)
    assert scores["heldout"] == 0.0
    assert set(scores["attributes"]) == {"colour", "shape", "count", "position"}


def test_worst_failures_put_one_sample_per_prompt_first(detector):
    prompts = eval_prompts()[:3]
    blank = np.full((32, 32, 3), 220, np.uint8)
    results = score_images([blank] * 6, [0, 0, 1, 1, 2, 2], [0, 1, 0, 1, 0, 1], prompts, detector)
    worst = worst_failures(results, n=4)
    assert [r.prompt_index for r in worst[:3]] == [0, 1, 2] and len(worst) == 4


def test_a_square_drawn_for_a_circle_prompt_is_caught(detector):
    p = prompt("a " + " ".join([next(q for q in eval_prompts() if q.category == "single_object"
                                     and q.objects[0]["shape"] == "circle").objects[0]["colour"], "circle"]))
    colour = p.objects[0]["colour"]
    img = render_scene(Scene((ShapeObject("square", colour, "large", 0.5, 0.5),), "x", "single"), 64)
    (result,) = score_images([img], [eval_prompts().index(p)], None, None, detector)
    assert not result.correct and result.attributes["colour"] == 1.0 and result.attributes["shape"] == 0.0


def test_trainer_evaluator_scores_the_training_model(make_stage):
    from workbench.eval.compositional import trainer_evaluator
    from workbench.train import Trainer

    stage = make_stage(steps=2, eval_every=2)
    trainer = Trainer(stage, progress=False, evaluator=trainer_evaluator(steps=2, categories=("single_object",)))
    trainer.run()
    scores = trainer.history[-1]["eval"]
    assert set(scores) == {"overall", "single_object_shape", "single_object_colour", "shape", "colour"}
    assert all(0.0 <= v <= 1.0 for v in scores.values())
