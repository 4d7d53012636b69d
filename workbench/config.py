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
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


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
    """Raise ``ValueError("<owner>.<name>: expected <expected>, got <got>")`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{owner}.{name}: expected {expected}, got {got!r}")


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
            raise ValueError(f"{what or cls.__name__} has no field '{key}'{did_you_mean(key, known)}")


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


def read_yaml_mapping(path: Path, what: str, error: type[Exception] = ValueError) -> dict:
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

    Unknown keys in the file or the overrides raise ``ValueError`` with a did-you-mean hint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{cls.__name__} config file not found: {path}")
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
            raise ValueError(f"{flag} expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = parse_yaml(value)
    return out


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Fields whose values differ between two config dicts: ``{name: (a_value, b_value)}``."""
    names = sorted(set(a) | set(b))
    norm = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731 - JSON turns tuples into lists
    return {n: (a.get(n), b.get(n)) for n in names if norm(a.get(n)) != norm(b.get(n))}


# MicroDiTConfig fields that may change between stages: the latent grid grows (positions interpolated)
RESOLUTION_FIELDS = ("pos_interp_scale", "sample_size")
# fields older checkpoints saved in the model config that are not architecture (moe_lr_scale is a Stage field now)
RETIRED_MODEL_FIELDS = ("moe_lr_scale",)


# bumped whenever MicroDiTConfig gains a field (1: checkpoints from before versions were recorded)
MODEL_CONFIG_VERSION = 3                 # 2: recorded; 3: conv_stem, long_skips, output_conv


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
    """``config_diff`` of two ``MicroDiTConfig`` dicts without ``RESOLUTION_FIELDS``: what makes weights incompatible."""
    return {k: v for k, v in config_diff(a, b).items() if k not in RESOLUTION_FIELDS}


def format_diff(diff: dict[str, tuple[Any, Any]], a: str = "saved", b: str = "this model") -> str:
    """``"width: saved 128 vs this model 256, depth: ..."``: the one way a config difference is worded."""
    return ", ".join(f"{k}: {a} {x!r} vs {b} {y!r}" for k, (x, y) in diff.items())


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# what each annotation of a numeric config accepts (an int is a fine float; a bool is never a number)
_TYPE_CHECKS = {
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "float": (_is_number, "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "tuple[float, float]": (lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(map(_is_number, v)),
                            "two numbers [first, last]"),
}


def check_field_types(config: Any) -> None:
    """``ValueError`` naming the first field of a dataclass config whose value has the wrong type.

    Used by ``MicroDiTConfig``, so ``model_overrides: {norm_eps: abc}`` says ``MicroDiTConfig.norm_eps:
    expected a number, got 'abc'`` instead of a ``TypeError`` deep in a comparison.
    """
    for f in dataclasses.fields(config):
        check = _TYPE_CHECKS.get(str(f.type))
        if check is not None:
            ok, expected = check
            require(ok(getattr(config, f.name)), type(config).__name__, f.name, expected, getattr(config, f.name))


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

    def __post_init__(self) -> None:
        own = type(self).__name__
        check_field_types(self)                        # types first, so the range checks below cannot TypeError
        self.qkv_ratio = tuple(float(r) for r in self.qkv_ratio)
        self.mlp_ratio = tuple(float(r) for r in self.mlp_ratio)
        for name in ("in_channels", "sample_size", "patch_size", "caption_dim", "width", "depth", "head_dim",
                     "ffn_multiple_of", "num_experts", "timestep_freqs"):
            value = getattr(self, name)
            require(isinstance(value, int) and value > 0, own, name, "a positive integer", value)
        for name in ("mixer_depth", "moe_every", "conv_stem"):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 0, own, name, "an integer >= 0", value)
        require(self.width % self.head_dim == 0, own, "width", f"a multiple of head_dim={self.head_dim}", self.width)
        if self.mixer_depth:
            require(isinstance(self.mixer_width, int) and self.mixer_width > 0 and self.mixer_width % self.head_dim == 0,
                    own, "mixer_width", f"a positive multiple of head_dim={self.head_dim}", self.mixer_width)
        require(self.width % 4 == 0, own, "width", "a multiple of 4 (2-D sin-cos positions)", self.width)
        require(self.sample_size % self.patch_size == 0, own, "sample_size",
                f"a multiple of patch_size={self.patch_size}", self.sample_size)
        for name in ("qkv_ratio", "mlp_ratio"):
            value = getattr(self, name)
            require(len(value) == 2 and all(r > 0 for r in value), own, name, "two positive numbers (first, last)", value)
        require(max(self.qkv_ratio) <= 1.0, own, "qkv_ratio", "ratios <= 1.0", self.qkv_ratio)
        for name in ("mixer_mlp_ratio", "caption_mlp_ratio", "expert_capacity", "pos_interp_scale",
                     "norm_eps"):
            value = getattr(self, name)
            require(value > 0, own, name, "a positive number", value)
        require(self.timestep_freqs % 2 == 0, own, "timestep_freqs", "an even number", self.timestep_freqs)
