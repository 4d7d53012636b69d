"""The fixed GenEval-like evaluation prompts and what a correct image must show for each.

``eval_prompts()`` always returns the same 55 prompts; ``workbench.eval.compositional`` scores
samples against them.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from .captions import caption_for
from .objects import ShapeObject
from .vocabulary import COLOURS, HELDOUT_COMBOS, RELATIONS, SHAPES, TRAIN_COMBOS

EVAL_CATEGORIES = ("single_object", "two_objects", "counting", "colours", "position", "colour_attribution")


@dataclass(frozen=True)
class EvalPrompt:
    """One evaluation prompt and what a correct image must show.

    ``objects`` are ``{shape, colour, count}`` dicts; ``check`` says what is scored ("shape",
    "colour", "count", "relation" or "binding"); ``heldout`` marks a held-out colour-shape combo.
    """

    category: str
    prompt: str
    objects: tuple[dict, ...]
    check: str
    relation: tuple[int, str, int] | None = None
    heldout: bool = False


def _prompt(category: str, check: str, objs: Sequence[tuple[str, str, int]],
            relation: tuple[int, str, int] | None = None) -> EvalPrompt:
    """Build an EvalPrompt from ``(colour, shape, count)`` triples via the training templates."""
    things = [ShapeObject(shape, colour, "small", 0.5, 0.5) for colour, shape, _ in objs]
    if objs[0][2] > 1:
        things = things * objs[0][2]
        text = caption_for(things, "count", None, with_size=False)
    elif relation:
        text = caption_for(things, "position", relation, with_size=False)
    else:
        text = caption_for(things, "pair" if len(things) == 2 else "single", None, with_size=False)
    heldout = any((c, s) in HELDOUT_COMBOS for c, s, _ in objs)
    spec = tuple({"shape": s, "colour": c, "count": k} for c, s, k in objs)
    return EvalPrompt(category, text, spec, check, relation, heldout)


def eval_prompts() -> list[EvalPrompt]:
    """The fixed GenEval-like prompt set (same list every call; 55 prompts).

    Categories (``EVAL_CATEGORIES``): single_object (each shape), colours (each colour), two_objects,
    counting (2, 3, 4), position (each relation), colour_attribution; plus held-out prompts
    (``heldout=True``): each ``HELDOUT_COMBOS`` pair alone (colours) and bound in a pair
    (colour_attribution).
    """
    rng = random.Random("shapes/eval-prompts/v1")      # fixed: the prompt set never changes
    train = list(TRAIN_COMBOS)
    pick = rng.choice
    prompts = []
    for shape in SHAPES:
        colour = pick([c for c, s in train if s == shape])
        prompts.append(_prompt("single_object", "shape", [(colour, shape, 1)]))
    for colour in COLOURS:
        shape = pick([s for c, s in train if c == colour])
        prompts.append(_prompt("colours", "colour", [(colour, shape, 1)]))
    for shape in SHAPES:
        first = pick([c for c, s in train if s == shape])
        other = pick([(c, s) for c, s in train if s != shape])
        prompts.append(_prompt("two_objects", "shape", [(first, shape, 1), (*other, 1)]))
    for count in (2, 3, 4):
        for _ in range(3):
            colour, shape = pick(train)
            prompts.append(_prompt("counting", "count", [(colour, shape, count)]))
    for rel in RELATIONS:
        for _ in range(2):
            a = pick(train)
            b = pick([(c, s) for c, s in train if c != a[0] and s != a[1]])
            prompts.append(_prompt("position", "relation", [(*a, 1), (*b, 1)], (0, rel, 1)))
    for _ in range(6):
        a = pick(train)
        b = pick([(c, s) for c, s in train if c != a[0] and s != a[1]])
        prompts.append(_prompt("colour_attribution", "binding", [(*a, 1), (*b, 1)]))
    for colour, shape in HELDOUT_COMBOS:
        prompts.append(_prompt("colours", "colour", [(colour, shape, 1)]))
        other = pick([(c, s) for c, s in train if c != colour and s != shape])
        prompts.append(_prompt("colour_attribution", "binding", [(colour, shape, 1), (*other, 1)]))
    return prompts
