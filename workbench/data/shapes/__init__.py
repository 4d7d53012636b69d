"""Embedded procedural dataset: coloured shapes with captions and exact ground truth.

Nothing to download. Every scene is drawn from its own generator, seeded by ``(seed, split, index)``,
so any scene can be rebuilt alone and rendered at any resolution. A scene is 1 to 4 anti-aliased objects on a
light-grey background with a faint gradient, plus a caption and the structured ground truth:

- 6 shapes (circle, square, triangle, star, ring, cross), 8 colours, 2 sizes (small, large);
- 4 caption templates (``TEMPLATES``), mixed by ``template_weights``:
  ``single``   "a large red circle"
  ``pair``     "a blue square and a green star"
  ``position`` "a purple ring above an orange cross"
  ``count``    "three yellow triangles"
- the colour-shape pairs in ``HELDOUT_COMBOS`` are never rendered in the train or val split. They
  appear only in the fixed evaluation prompts (``eval_prompts``), so generalisation can be measured.

Geometry is resolution independent: centres and boxes are fractions of the image side. At 32 px a
large object is about 14 px across and a small one about 8 px. Objects never overlap (their boxes
are at least ``GAP`` apart), so every object is fully visible.

Two ways in::

    images, scenes = shapes_arrays(256, resolution=32, split="train", seed=0)  # fast numpy path
    ds = shapes_dataset(1000, resolution=64, split="val")                      # datasets.Dataset
"""

from .captions import caption_for, parse_caption
from .geometry import UNIT_EXTENTS, sdf
from .objects import ShapeObject
from .prompts import EVAL_CATEGORIES, EvalPrompt, eval_prompts
from .render import render_scene, shape_rows, shapes_arrays, shapes_dataset, shapes_features
from .scenes import (Scene, check_template_weights, make_scene, make_scenes, place_grid, place_pair, place_single,
                     scene_key, scene_rng)
from .vocabulary import (COLOURS, COUNT_WORDS, DEFAULT_TEMPLATE_WEIGHTS, HELDOUT_COMBOS, RELATIONS, SHAPES,
                         SHAPES_VERSION, SIZES, SPLITS, TEMPLATES, TRAIN_COMBOS)

__all__ = ["COLOURS", "COUNT_WORDS", "DEFAULT_TEMPLATE_WEIGHTS", "EVAL_CATEGORIES", "EvalPrompt", "HELDOUT_COMBOS",
           "RELATIONS", "SHAPES", "SHAPES_VERSION", "SIZES", "SPLITS", "Scene", "ShapeObject", "TEMPLATES",
           "TRAIN_COMBOS", "UNIT_EXTENTS", "caption_for", "check_template_weights", "eval_prompts", "make_scene",
           "make_scenes", "parse_caption", "place_grid", "place_pair", "place_single", "render_scene", "scene_key",
           "scene_rng", "sdf", "shape_rows", "shapes_arrays", "shapes_dataset", "shapes_features"]
