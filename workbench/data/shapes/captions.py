"""Captions of shapes scenes: the four templates in words, and the parser that reads them back.

    caption_for(objects, "position", (0, "above", 1), with_size=False)   # 'a purple ring above an orange cross'
    parse_caption("two small red circles")
    # {'objects': [{'shape': 'circle', 'colour': 'red', 'size': 'small', 'count': 2}], 'relation': None}
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .objects import ShapeObject
from .vocabulary import COLOURS, COUNT_WORDS, RELATIONS, SHAPES, TEMPLATES
from ...errors import InputError


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def _noun(obj: ShapeObject, with_size: bool) -> str:
    words = ([obj.size] if with_size else []) + [obj.colour, obj.shape]
    return " ".join(words)


def caption_for(objects: Sequence[ShapeObject], template: str, relation: tuple[int, str, int] | None,
                with_size: bool) -> str:
    """The caption of a scene, from its objects and template (see the module docstring)."""
    if template == "single":
        return _article(_noun(objects[0], with_size))
    if template == "pair":
        return f"{_article(_noun(objects[0], with_size))} and {_article(_noun(objects[1], with_size))}"
    if template == "position":
        i, rel, j = relation
        return f"{_article(_noun(objects[i], with_size))} {RELATIONS[rel]} {_article(_noun(objects[j], with_size))}"
    if template == "count":
        first = objects[0]
        size = f"{first.size} " if with_size else ""
        return f"{COUNT_WORDS[len(objects)]} {size}{first.colour} {_plural(first.shape)}"
    raise InputError(f"unknown template {template!r}; expected one of {TEMPLATES}")


_NUM = "|".join(["a", "an"] + list(COUNT_WORDS.values()))
_NP = (rf"(?P<num{{i}}>{_NUM}) (?:(?P<size{{i}}>small|large) )?(?:(?P<colour{{i}}>{'|'.join(COLOURS)}) )?"
       rf"(?P<shape{{i}}>{'|'.join(SHAPES)})(?:e?s)?")
_CAPTION = re.compile(
    rf"^{_NP.format(i=0)}(?:(?P<link> and | {' | '.join(RELATIONS.values())} ){_NP.format(i=1)})?$")


def parse_caption(caption: str) -> dict | None:
    """Parse a shapes caption back into ``{"objects": [...], "relation": (0, rel, 1) | None}``.

    Each object is ``{shape, colour (or None), size (or None), count}``. Returns None if the caption
    is not in the shapes grammar.

    Example::

        parse_caption("two small red circles")
        # {'objects': [{'shape': 'circle', 'colour': 'red', 'size': 'small', 'count': 2}], 'relation': None}
    """
    match = _CAPTION.match(caption.strip().lower())
    if match is None:
        return None
    words = {w: n for n, w in COUNT_WORDS.items()} | {"a": 1, "an": 1}
    objects = []
    for i in range(2):
        if match.group(f"shape{i}"):
            objects.append({"shape": match.group(f"shape{i}"), "colour": match.group(f"colour{i}"),
                            "size": match.group(f"size{i}"), "count": words[match.group(f"num{i}")]})
    link = (match.group("link") or "").strip()
    rel = {v: k for k, v in RELATIONS.items()}.get(link)
    return {"objects": objects, "relation": (0, rel, 1) if rel else None}
