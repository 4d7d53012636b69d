"""Dataclass configs: validation helpers, YAML load/dump, and the model config.

Every config in the workbench is a dataclass validated in ``__post_init__``. Errors are
``ValueError`` messages that name the field, what was expected and what was received, so a
typo in a YAML file or a notebook parameter is caught before any work starts::

    from workbench.config import MicroDiTConfig, from_dict
    cfg = from_dict(MicroDiTConfig, {"width": 256, "depht": 4})
    # ValueError: MicroDiTConfig has no field 'depht' (did you mean 'depth'?)
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import InputError, MissingFileError

T = TypeVar("T")
PACKAGE_ROOT = Path(__file__).resolve().parent          # .../workbench


def shipped_dir(name: str, checkout: str) -> Path:
    """A folder shipped inside the wheel as ``workbench/<name>``, or the source checkout's ``<checkout>/``."""
    packaged = PACKAGE_ROOT / name
    return packaged if packaged.is_dir() else PACKAGE_ROOT.parent / checkout


def configs_dir() -> Path:
    """The shipped configs: ``configs/`` of the checkout, in the wheel as ``workbench/configs``."""
    return shipped_dir("configs", "configs")


def find_config_file(path: str | os.PathLike, what: str = "config") -> Path:
    """A config YAML by path: as given (relative paths start at the working folder), else the shipped one.

    ``configs/demo/stage1.yaml`` (or ``demo/stage1.yaml``) is found in the package's configs when the
    working folder has none, so a notebook or command runs from any folder. The error names every
    folder searched::

        find_config_file("configs/demo/stage1.yaml")     # ./configs/demo/stage1.yaml, else the shipped file
    """
    given = Path(path).expanduser()
    if given.is_file():
        return given
    if given.is_absolute():
        raise MissingFileError(f"{what} file not found: {path}")
    inside = Path(*given.parts[1:]) if given.parts[:1] == ("configs",) else given
    shipped = configs_dir() / inside
    if shipped.is_file():
        return shipped
    raise MissingFileError(f"{what} file not found: {path} (looked in {Path.cwd()} and {configs_dir()}); give the "
                           f"path of a YAML file, or a shipped one such as configs/demo/stage1.yaml")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, also reading ``1e-3`` and ``2E5`` as floats (YAML 1.2), not strings."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?\.?[0-9_]*[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load`` that reads ``lr: 1e-3`` as a float (plain PyYAML gives the string ``'1e-3'``)."""
    return yaml.load(text, Loader=_Loader)


def require(ok: bool, owner: str, name: str, expected: str, got: Any) -> None:
    """Raise ``InputError("<owner>.<name>: expected <expected>, got <got>")`` unless ``ok``."""
    if not ok:
        raise InputError(f"{owner}.{name}: expected {expected}, got {got!r}")


def did_you_mean(key: str, known) -> str:
    """`` (did you mean 'steps'?)`` for the closest known name, else `` (known: a, b, ...)``: the one hint text."""
    known = list(known)
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(known)})"


def check_known_keys(cls: type, keys, what: str | None = None) -> None:
    """Raise ``ValueError`` for keys that are not fields of dataclass ``cls``, suggesting the closest."""
    known = [f.name for f in dataclasses.fields(cls)]
    for key in keys:
        if key not in known:
            raise InputError(f"{what or cls.__name__} has no field '{key}'{did_you_mean(key, known)}")


def from_dict(cls: type[T], values: dict[str, Any]) -> T:
    """Build dataclass ``cls`` from a dict, rejecting unknown keys with a did-you-mean hint."""
    check_known_keys(cls, values)
    return cls(**values)


def to_dict(config: Any) -> dict[str, Any]:
    """A plain, YAML/JSON-able dict of a dataclass config (tuples become lists)."""
    def plain(value):
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        return value
    return {k: plain(v) for k, v in dataclasses.asdict(config).items()}


def read_yaml_mapping(path: Path, what: str, error: type[Exception] = InputError) -> dict:
    """The mapping in a YAML file (empty file: ``{}``); ``error`` with one line for invalid YAML or another type."""
    try:
        values = parse_yaml(path.read_text()) or {}
    except yaml.YAMLError as err:
        problem = " ".join(str(err).split())
        raise error(f"{path} is not valid YAML ({problem}); fix the file, or start from configs/demo") from None
    if not isinstance(values, dict):
        raise error(f"{path}: expected a YAML mapping of {what}, got {type(values).__name__}")
    return values


def load_yaml(cls: type[T], path: str | Path, **overrides: Any) -> T:
    """Load dataclass ``cls`` from a YAML file (a mapping of field names to values), then apply overrides.

    ``path`` is found as :func:`find_config_file` finds it (the working folder, then the shipped configs).
    Unknown keys in the file or the overrides raise ``ValueError`` with a did-you-mean hint.
    """
    path = find_config_file(path, f"{cls.__name__} config")
    values = read_yaml_mapping(path, f"{cls.__name__} fields")
    check_known_keys(cls, values, what=f"{cls.__name__} config {path}")
    check_known_keys(cls, overrides)
    return cls(**{**values, **overrides})


def dump_yaml(config: Any, path: str | Path) -> None:
    """Write a dataclass config to a YAML file (creating its folder)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def parse_overrides(pairs: list[str] | None, flag: str = "--set") -> dict[str, Any]:
    """``["steps=100", "model_overrides={depth: 4}"]`` -> ``{"steps": 100, "model_overrides": {"depth": 4}}``.

    Values are parsed as YAML scalars or flow collections (``4``, ``0.5``, ``true``, ``[0.5, 1.0]``).
    ``flag`` names the command-line option in the error for a pair without ``=``.
    """
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise InputError(f"{flag} expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = parse_yaml(value)
    return out


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Fields whose values differ between two config dicts: ``{name: (a_value, b_value)}``."""
    names = sorted(set(a) | set(b))

    def norm(value):                                    # JSON turns tuples into lists
        return list(value) if isinstance(value, tuple) else value

    return {n: (a.get(n), b.get(n)) for n in names if norm(a.get(n)) != norm(b.get(n))}


# MicroDiTConfig fields that may change between stages: the latent grid grows (positions interpolated)
RESOLUTION_FIELDS = ("pos_interp_scale", "sample_size")
# fields older checkpoints saved in the model config that are not architecture (moe_lr_scale is a Stage field now)
RETIRED_MODEL_FIELDS = ("moe_lr_scale",)


# bumped whenever MicroDiTConfig gains a field (1: checkpoints from before versions were recorded)
MODEL_CONFIG_VERSION = 4                 # 2: recorded; 3: conv_stem, long_skips, output_conv; 4: rope, cosine_attention


def complete_model_config(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved ``MicroDiTConfig`` dict made current: retired fields dropped, fields it predates filled in.

    (A dict with keys ``MicroDiTConfig`` does not know is another model's config and is returned as it is.)

    A new field's default always keeps the behaviour the model had before the field existed, so a
    checkpoint saved by an older workbench builds, compares and samples as the model it was trained as::

        complete_model_config({"width": 128, "depth": 6})["caption_mask_compat"]    # False, the default
    """
    current = {k: v for k, v in saved.items() if k not in RETIRED_MODEL_FIELDS}
    defaults = to_dict(MicroDiTConfig())
    if not set(current) <= set(defaults):                  # another model's config: nothing to fill in
        return current
    return {**defaults, **current}


def architecture_diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``config_diff`` of two ``MicroDiTConfig`` dicts without ``RESOLUTION_FIELDS``: what makes weights
    incompatible."""
    return {k: v for k, v in config_diff(a, b).items() if k not in RESOLUTION_FIELDS}


def format_diff(diff: dict[str, tuple[Any, Any]], a: str = "saved", b: str = "this model") -> str:
    """``"width: saved 128 vs this model 256, depth: ..."``: the one way a config difference is worded."""
    return ", ".join(f"{k}: {a} {x!r} vs {b} {y!r}" for k, (x, y) in diff.items())


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_pair(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(map(_is_number, value))


# what each field annotation of a config accepts (an int is a fine float; a bool is never a number);
# ``X | None`` is derived from ``X``. A new annotation needs one line here (check_field_types says so)
FIELD_TYPES = {
    "int": (_is_int, "an integer"),
    "float": (_is_number, "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "list": (lambda v: isinstance(v, (list, tuple)), "a list"),
    "dict": (lambda v: isinstance(v, dict), "a mapping"),
    "tuple[float, float]": (_is_pair, "two numbers [first, last]"),
}


def _coerce(value: Any, base: str) -> Any:
    """Paths to str, numpy and other numbers to int or float, for the annotations that take them."""
    if base == "str" and isinstance(value, os.PathLike):
        return os.fspath(value)
    if base == "int" and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if base == "float" and isinstance(value, numbers.Real) and not isinstance(value, (bool, int)):
        return float(value)
    return value


def check_field_types(config: Any) -> None:
    """Check (and coerce: paths to str, numpy numbers to Python's) every field of a dataclass config by its annotation.

    A ``ValueError`` names the first wrong field, so ``model_overrides: {norm_eps: abc}`` says
    ``MicroDiTConfig.norm_eps: expected a number, got 'abc'`` instead of a ``TypeError`` deep in a
    comparison. Run it first in ``__post_init__``; the range checks after it can then compare freely.
    """
    owner = type(config).__name__
    for f in dataclasses.fields(config):
        annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        base, optional = (annotation[:-len(" | None")], True) if annotation.endswith(" | None") else (annotation, False)
        if base not in FIELD_TYPES:
            raise TypeError(f"{owner}.{f.name}: no type check for the annotation {annotation!r}; "
                            "add it to workbench.config.FIELD_TYPES")
        ok, expected = FIELD_TYPES[base]
        value = _coerce(getattr(config, f.name), base)
        require((optional and value is None) or ok(value), owner, f.name,
                expected + (" or null" if optional else ""), value)
        object.__setattr__(config, f.name, value)


def check_ranges(config: Any, ranges: dict[str, tuple[Callable[[Any], bool], str]]) -> None:
    """``require`` each ``field: (ok, expected)`` of a config's range table, in the table's order."""
    for name, (ok, expected) in ranges.items():
        require(ok(getattr(config, name)), type(config).__name__, name, expected, getattr(config, name))


def _positive(value: Any) -> bool:
    return value > 0


def _non_negative(value: Any) -> bool:
    return value >= 0


POSITIVE_INT = (_positive, "a positive integer")
NON_NEGATIVE_INT = (_non_negative, "an integer >= 0")
POSITIVE = (_positive, "a positive number")
NON_NEGATIVE = (_non_negative, "a number >= 0")


def in_unit_interval(value: Any) -> bool:
    """``0 <= value < 1`` (a ratio, a probability, a decay)."""
    return 0.0 <= value < 1.0


def _two_positive(value: Any) -> bool:
    return all(r > 0 for r in value)


# MicroDiTConfig's ranges, checked in this order after the types
MODEL_RANGES = {
    **{name: POSITIVE_INT for name in ("in_channels", "sample_size", "patch_size", "caption_dim", "width", "depth",
                                       "head_dim", "ffn_multiple_of", "num_experts", "timestep_freqs")},
    **{name: NON_NEGATIVE_INT for name in ("mixer_depth", "moe_every", "conv_stem")},
    "qkv_ratio": (lambda v: _two_positive(v) and max(v) <= 1.0, "two positive numbers (first, last), at most 1.0"),
    "mlp_ratio": (_two_positive, "two positive numbers (first, last)"),
    **{name: POSITIVE for name in ("mixer_mlp_ratio", "caption_mlp_ratio", "expert_capacity", "pos_interp_scale",
                                   "norm_eps")},
    "timestep_freqs": (lambda v: v % 2 == 0, "an even number"),
}


@dataclass
class MicroDiTConfig:
    """Architecture of a MicroDiT (defaults: the paper's MicroDiT_XL_2 on 4-channel SDXL latents).

    Widths and depths follow the paper's MicroDiT_XL_2; presets in ``workbench.model.PRESETS`` override these.
    """

    in_channels: int = 4                       # latent channels (4 for the SDXL VAE, 3 for the pixel codec)
    sample_size: int = 32                      # default latent side (32 = 256 px through an f8 VAE)
    patch_size: int = 2                        # p: tokens are p x p latent patches
    caption_dim: int = 1024                    # caption token width from the text encoder
    width: int = 1024                          # backbone width
    depth: int = 28                            # backbone blocks
    head_dim: int = 64                         # attention head size everywhere
    mixer_depth: int = 6                       # patch-mixer blocks before masking (0 = no mixer)
    mixer_width: int = 768                     # patch-mixer width (projections added when != width)
    qkv_ratio: tuple[float, float] = (0.5, 1.0)   # layer-wise scaling of the attention inner dim, first -> last block
    mlp_ratio: tuple[float, float] = (0.5, 4.0)   # layer-wise scaling of the FFN hidden size, first -> last block
    mixer_mlp_ratio: float = 4.0               # FFN ratio inside the patch-mixer
    caption_mlp_ratio: float = 4.0             # FFN ratio of the caption transformer block
    ffn_multiple_of: int = 256                 # FFN hidden sizes are rounded up to this multiple
    num_experts: int = 8                       # experts per MoE layer
    expert_capacity: float = 2.0               # expert-choice capacity: each expert takes int(capacity*T/E) tokens
    moe_every: int = 2                         # MoE in every n-th block (0 = dense everywhere)
    timestep_freqs: int = 512                  # sinusoidal frequencies of the timestep embedding
    pos_interp_scale: float = 1.0              # position interpolation: 2.0 when a 256 px model moves to 512 px
    norm_eps: float = 1e-6                     # LayerNorm epsilon
    caption_mask_compat: bool = False          # True: ignore the caption mask, like the official code
    # locality levers for small images (workbench.model.locality), off in every preset: model_config_version 3
    conv_stem: int = 0                         # channels of a two-layer 5x5 conv stem before patchify (0: none)
    long_skips: bool = False                   # U-ViT long skips: block i's output joins block depth-1-i's input
    output_conv: bool = False                  # a residual 3x3 conv after unpatchify (U-ViT conv=True)
    # attention levers (workbench.model.rope, blocks.Attention), off in every preset: model_config_version 4
    rope: bool = False                         # 2-D rotary positions in every self-attention (head_dim % 4 == 0)
    cosine_attention: bool = False             # self-attention on cosine similarity with a learnt per-head scale

    def __post_init__(self) -> None:
        own = type(self).__name__
        check_field_types(self)                        # types first, so the range checks below cannot TypeError
        self.qkv_ratio = tuple(float(r) for r in self.qkv_ratio)
        self.mlp_ratio = tuple(float(r) for r in self.mlp_ratio)
        check_ranges(self, MODEL_RANGES)
        require(self.width % self.head_dim == 0, own, "width", f"a multiple of head_dim={self.head_dim}", self.width)
        require(self.width % 4 == 0, own, "width", "a multiple of 4 (2-D sin-cos positions)", self.width)
        if self.rope:
            require(self.head_dim % 4 == 0, own, "head_dim", "a multiple of 4 with rope=True (2-D RoPE)", self.head_dim)
        if self.mixer_depth:
            require(self.mixer_width > 0 and self.mixer_width % self.head_dim == 0,
                    own, "mixer_width", f"a positive multiple of head_dim={self.head_dim}", self.mixer_width)
        require(self.sample_size % self.patch_size == 0, own, "sample_size",
                f"a multiple of patch_size={self.patch_size}", self.sample_size)
