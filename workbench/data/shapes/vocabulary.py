"""The shapes world's vocabulary: shapes, colours, sizes, caption templates and relations, held-out pairs.

Everything else in ``workbench.data.shapes`` (scenes, captions, rendering, evaluation prompts) is
built from these names, so they are the one place to change the world.
"""

from __future__ import annotations

SHAPES_VERSION = 1  # bump when scenes or pixels change, so configs hashing describe() notice

# ---------------------------------------------------------------------------------------------
#  Vocabulary
# ---------------------------------------------------------------------------------------------

SHAPES = ("circle", "square", "triangle", "star", "ring", "cross")
COLOURS = {                                 # name -> sRGB, far apart from each other and from grey
    "red": (220, 38, 38),
    "orange": (245, 130, 20),
    "yellow": (235, 200, 20),
    "green": (34, 160, 60),
    "cyan": (20, 185, 200),
    "blue": (40, 70, 225),
    "purple": (135, 50, 190),
    "pink": (240, 110, 180),
}
SIZES = {"small": 0.125, "large": 0.22}     # half-size of the shape's unit frame, fraction of side
HELDOUT_COMBOS = (                          # (colour, shape) never rendered in train or val
    ("red", "star"),
    ("orange", "circle"),
    ("yellow", "ring"),
    ("green", "cross"),
    ("blue", "triangle"),
    ("purple", "square"),
)
TRAIN_COMBOS = tuple((c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELDOUT_COMBOS)

TEMPLATES = ("single", "pair", "position", "count")
DEFAULT_TEMPLATE_WEIGHTS = {"single": 0.4, "pair": 0.2, "position": 0.2, "count": 0.2}
RELATIONS = {"left_of": "to the left of", "right_of": "to the right of", "above": "above", "below": "below"}
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
SPLITS = ("train", "val")                   # disjoint seed streams (see scene_rng)

MARGIN = 0.02                               # min distance from an object's box to the image border
GAP = 0.04                                  # min distance between two objects' boxes
SIZE_IN_CAPTION_P = 0.5                     # probability that a caption names the sizes
BACKGROUND_GREY = (200.0, 240.0)            # background grey level range
BACKGROUND_GRADIENT = 12.0                  # max grey change across the image ("lightly textured")
