"""Training stages: one validated dataclass per stage, YAML files, and the checks run before training.

The paper trains in four stages (256 px masked, 256 px unmasked, 512 px masked, 512 px
unmasked); each stage starts from the previous one's final checkpoint (``init_from``)::

    stage = Stage.from_yaml("configs/demo/stage1.yaml", steps=200)
    stage.stage_dir            # runs/<run>/<name>
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import (NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, check_field_types, check_known_keys,
                      check_ranges, dump_yaml, from_dict, in_unit_interval, load_yaml, require, to_dict)
from ..data.prepared_format import PreparedInfo
from ..diffusion import EDMConfig
from ..model import preset_config
from . import checkpoint as ckpt
from ..errors import InputError

DEFAULT_PROMPTS = ("a red circle", "a blue square", "a green triangle", "a yellow star",
                   "a large purple ring", "an orange cross", "two red circles", "a blue star above a green square")
SCHEDULES = ("cosine", "constant")
PRECISIONS = ("no", "bf16", "fp16", "bf16-mixed")   # bf16: autocast; bf16-mixed: bf16 weights, fp32 master
INIT_MODES = ("weights", "full")


def is_single_path_component(name: str) -> bool:
    """True for a folder name that stays where it is put: ``stage1``, ``demo-2``; never ``..``, ``a/b``, ``.x``.

    ``Stage.name`` and ``Stage.run`` must be one: ``--fresh`` and retention delete inside
    ``<runs_dir>/<run>/<name>``, so a name that climbs out would delete another run's files.
    """
    return (isinstance(name, str) and bool(name) and not name.startswith(".") and "\0" not in name
            and "/" not in name and "\\" not in name)


FOLDER_NAME_RULE = "one folder name: not empty, no '/' or '\\', not '.' or '..', no leading '.'"


def _one_of(choices: tuple[str, ...], joiner: str = " or ") -> tuple:
    return (lambda v: v in choices, joiner.join(choices))


# Stage's ranges, checked in this order after the field types (config.check_field_types); the EDM
# constants (p_std, sigma_data) are EDMConfig's to check
STAGE_RANGES = {
    **{name: POSITIVE_INT for name in ("steps", "global_batch", "micro_batch", "resolution", "sample_steps",
                                       "eval_samples_per_prompt")},
    **{name: NON_NEGATIVE_INT for name in ("warmup_steps", "ema_start", "sample_every", "eval_every",
                                           "checkpoint_every", "log_every", "seed")},
    "keep_last": (lambda v: v >= 1, "at least 1"),
    "max_nonfinite": (lambda v: v >= 1, "at least 1"),
    "lr": POSITIVE,
    "moe_lr_scale": POSITIVE,
    "repa_weight": NON_NEGATIVE,
    "repa_depth": (lambda v: v >= 1, "a block number >= 1"),
    "repa_encoder": (lambda v: v == "codec" or v.startswith("vae:"), "'codec' or 'vae:PATH'"),
    "mask_ratio": (in_unit_interval, "a value in [0, 1)"),
    "caption_dropout": (in_unit_interval, "a value in [0, 1)"),
    "ema_decay": (in_unit_interval, "a value in [0, 1)"),
    "ema_power": (lambda v: v >= 0, "a number >= 0 (0: a fixed decay)"),
    "final_lr_fraction": (lambda v: 0.0 <= v <= 1.0, "a value in [0, 1]"),
    "cooldown_fraction": (in_unit_interval, "a value in [0, 1)"),
    "weight_decay": NON_NEGATIVE,
    "grad_clip": NON_NEGATIVE,
    "betas": (lambda v: all(0 <= b < 1 for b in v), "two values in [0, 1)"),
    "loss_band_weight": POSITIVE,
    "loss_band": (lambda v: 0 < v[0] < v[1], "two noise levels 0 < min < max"),
    "sample_cfg_scale": (lambda v: v >= 1.0, "a guidance scale >= 1"),
    "schedule": _one_of(SCHEDULES),
    "mixed_precision": _one_of(PRECISIONS, " | "),
    "init_mode": _one_of(INIT_MODES),
    "name": (is_single_path_component, FOLDER_NAME_RULE),
    "run": (is_single_path_component, FOLDER_NAME_RULE),
}


@dataclass
class Stage:
    """One training stage: model, data, optimisation, noise, masking, monitoring, checkpoints."""

    name: str = "stage1"                       # stage folder: <runs_dir>/<run>/<name>
    run: str = "demo"                          # run name shared by the stages of one training
    runs_dir: str = "runs"                     # where runs live
    data: str = "data/prepared/shapes"         # a prepared dataset (workbench prepare --out)
    resolution: int = 32                       # image resolution of the latents_<resolution> column
    model: str = "nano"                        # MicroDiT preset
    model_overrides: dict = field(default_factory=dict)  # MicroDiTConfig fields, e.g. {pos_interp_scale: 2.0}
    mask_ratio: float = 0.75                   # fraction of patches dropped before the backbone
    steps: int = 1000                          # optimiser steps in this stage
    global_batch: int = 32                     # samples per optimiser step over all processes
    micro_batch: int = 32                      # samples per forward on one process (accumulation fills the rest)
    lr: float = 2.4e-4                         # peak learning rate
    schedule: str = "cosine"                   # cosine (to final_lr_fraction * lr) or constant, after warmup
    warmup_steps: int = 0                      # linear warmup from 0
    final_lr_fraction: float = 0.33            # where cosine or a cooldown ends (paper stage 1: 7.9e-5 / 2.4e-4)
    cooldown_fraction: float = 0.0             # constant schedule: the last fraction of steps decays linearly to
                                               # final_lr_fraction * lr (warmup-stable-decay; 0: no cooldown)
    weight_decay: float = 0.1                  # AdamW weight decay, on all parameters
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    grad_clip: float = 0.25                    # max global gradient norm (0 = no clipping)
    ema_decay: float = 0.0                     # EMA of the weights (0 = no EMA)
    ema_start: int = 0                         # EMA copies the weights until this step, then averages
    ema_power: float = 0.0                     # > 0: warm-up, decay min(ema_decay, (1 - 1/t)^(power + 1)) (EDM2)
    caption_dropout: float = 0.1               # probability of training on the null caption (for CFG)
    p_mean: float = -0.6                       # EDM training noise: mean of ln sigma
    p_std: float = 1.2                         # EDM training noise: std of ln sigma
    loss_band_weight: float = 1.0              # loss weight of sigma in loss_band, times EDM's (1: off)
    loss_band: tuple[float, float] = (1.0, 6.0)  # [min, max] sigma of that band
    sigma_data: float = 0.9                    # EDM sigma_data
    mixed_precision: str = "no"                # no | bf16 (autocast) | fp16 (GPUs) | bf16-mixed (train/precision.py)
    compile: bool = False                      # torch.compile each model block (MicroDiT.compile_blocks)
    activation_checkpointing: bool = False     # recompute each block's activations in backward (less memory)
    fsdp: bool = False                         # shard with FSDP2 instead of DDP (2+ processes; train/sharding.py)
    seed: int = 0                              # data order and per-sample noise
    init_from: str | None = None               # a run stage folder or checkpoint to start from
    init_mode: str = "weights"                 # weights: model (+EMA) only; full: also the optimiser state
    sample_prompts: list = field(default_factory=lambda: list(DEFAULT_PROMPTS))  # fixed prompts for sample grids
    sample_every: int = 0                      # sample grid every N steps (0: only at the end)
    sample_steps: int = 30                     # Heun steps for sample grids
    sample_cfg_scale: float = 5.0                    # classifier-free guidance for sample grids
    moe_lr_scale: float = 1.0                  # LR multiplier of the MoE parameters (the paper intends 0.5)
    repa_weight: float = 0.0                   # REPA alignment loss weight (0: off, the paper's recipe)
    repa_depth: int = 2                        # align the tokens after this backbone block (1-based)
    repa_encoder: str = "codec"                # frozen features: "codec" (the data's VAE) or "vae:PATH"
    eval_every: int = 0                        # compositional score every N steps (0: never; needs an evaluator)
    eval_samples_per_prompt: int = 1           # images per eval prompt for those scores
    checkpoint_every: int = 0                  # checkpoint every N steps (0: only at the end or on stop)
    keep_last: int = 2                         # checkpoints kept besides each stage's final one
    log_every: int = 10                        # metrics.jsonl line every N steps
    max_nonfinite: int = 20                    # stop after this many consecutive non-finite steps
    tensorboard: bool = False                  # also log to TensorBoard through accelerate

    def __post_init__(self) -> None:
        check_field_types(self)                        # types first, so the range checks below cannot TypeError
        self.betas = tuple(float(b) for b in self.betas)
        self.loss_band = tuple(float(b) for b in self.loss_band)
        self.sample_prompts = [str(p) for p in self.sample_prompts]
        check_ranges(self, STAGE_RANGES)
        require(self.global_batch % self.micro_batch == 0, "Stage", "global_batch",
                f"a multiple of micro_batch={self.micro_batch}", self.global_batch)
        require(self.cooldown_fraction == 0 or self.schedule == "constant", "Stage", "cooldown_fraction",
                "0 with schedule cosine (a cooldown ends a constant schedule)", self.cooldown_fraction)
        try:
            _ = self.edm                               # EDMConfig checks its own constants
        except ValueError as err:
            raise InputError(f"Stage: {err}") from None
        preset_config(self.model, **self.model_overrides)  # unknown preset or bad override fails here
        if self.mixed_precision == "bf16-mixed" and (self.fsdp or self.repa_weight > 0):
            raise InputError("Stage.mixed_precision: bf16-mixed does not combine with fsdp or REPA yet; use "
                             "mixed_precision bf16 (autocast) for them")

    def architecture(self) -> dict:
        """The ``MicroDiTConfig`` (as a dict) this stage trains: its preset with ``model_overrides``."""
        return to_dict(preset_config(self.model, **self.model_overrides))

    # ------------------------------------------------------------------ paths
    @property
    def edm(self) -> EDMConfig:
        """The stage's EDM constants (σ_data, P_mean, P_std, the loss band) as the loss and samplers take them."""
        return EDMConfig(sigma_data=self.sigma_data, p_mean=self.p_mean, p_std=self.p_std,
                         band_weight=self.loss_band_weight, band_min=self.loss_band[0], band_max=self.loss_band[1])

    @property
    def stage_dir(self) -> Path:
        """``<runs_dir>/<run>/<name>``: checkpoints/, samples/, metrics.jsonl, stage.yaml."""
        return Path(self.runs_dir) / self.run / self.name

    @property
    def checkpoint_dir(self) -> Path:
        """Where this stage's checkpoints are written."""
        return self.stage_dir / "checkpoints"

    # ------------------------------------------------------------------ YAML
    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> Stage:
        """Load a stage YAML file, then apply field overrides (like ``--set key=value``)."""
        return load_yaml(cls, path, **overrides)

    def to_yaml(self, path: str | Path) -> None:
        """Write this stage as YAML."""
        dump_yaml(self, path)

    def to_dict(self) -> dict:
        """Plain dict of every field."""
        return to_dict(self)

    def replace(self, **changes: Any) -> Stage:
        """A validated copy with some fields changed."""
        check_known_keys(type(self), changes, what="Stage")
        return from_dict(type(self), {**self.to_dict(), **changes})


def check_stage(stage: Stage, num_processes: int = 1) -> PreparedInfo:
    """Everything that can be checked before training starts; returns the prepared data's info.

    Raises ``ValueError`` / ``FileNotFoundError`` naming the field and the fix.
    """
    if stage.global_batch % (stage.micro_batch * num_processes):
        raise InputError(f"Stage.global_batch: expected a multiple of micro_batch x processes = "
                         f"{stage.micro_batch} x {num_processes}, got {stage.global_batch}")
    info = PreparedInfo.read(stage.data)
    if stage.resolution not in info.resolutions:
        raise InputError(f"Stage.resolution: {stage.resolution} px was not prepared in {stage.data} (it has "
                         f"{', '.join(map(str, info.resolutions))}); prepare it with --resolutions")
    arch = preset_config(stage.model, **stage.model_overrides)
    channels, side, _ = info.latent_shapes[stage.resolution]
    if side % arch.patch_size:
        raise InputError(f"Stage.resolution: {stage.resolution} px gives {side}x{side} latents, which patch_size="
                         f"{arch.patch_size} cannot tile; choose a resolution whose latent side is a multiple of it")
    if channels != arch.in_channels or info.caption_dim != arch.caption_dim:
        raise InputError(f"Stage.model: {stage.model} expects {arch.in_channels}-channel latents and "
                         f"{arch.caption_dim}-d captions, but {stage.data} has {channels} channels and "
                         f"{info.caption_dim}-d captions; set model_overrides in_channels/caption_dim")
    if stage.init_from is not None:
        ckpt.resolve_checkpoint(stage.init_from)   # FileNotFoundError naming the path
    if stage.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise InputError("Stage.mixed_precision: fp16 on CPU is ~100x slower than fp32; use 'bf16' or 'no'")
    return info


def lr_factor(step: int, stage: Stage) -> float:
    """Learning-rate multiplier at ``step``: linear warmup, then cosine to ``final_lr_fraction``, or constant
    (with ``cooldown_fraction`` > 0: constant, then a linear decay to ``final_lr_fraction`` over the last
    ``cooldown_fraction`` of the steps, so a run at a fixed budget ends annealed and is identical to the constant
    run until its cooldown starts)."""
    if stage.warmup_steps and step < stage.warmup_steps:
        return (step + 1) / stage.warmup_steps
    if stage.schedule == "constant":
        cooldown = round(stage.cooldown_fraction * stage.steps)
        start = stage.steps - cooldown
        if cooldown == 0 or step < start:
            return 1.0
        return 1.0 - (1.0 - stage.final_lr_fraction) * (step - start + 1) / cooldown
    span = max(1, stage.steps - stage.warmup_steps)
    progress = min(1.0, (step - stage.warmup_steps) / span)
    return stage.final_lr_fraction + (1 - stage.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress))


def ema_decay_at(step: int, stage: Stage) -> float:
    """The EMA decay used after optimiser step ``step`` (1-based): 0 (a copy) until ``ema_start``, then
    ``ema_decay``; with ``ema_power`` > 0 it warms up as EDM2's power-function EMA, (1 - 1/t)^(power + 1)
    with t counted from ``ema_start``, never above ``ema_decay``. Early weights then leave the average fast."""
    t = step - stage.ema_start
    if t <= 0:
        return 0.0
    if stage.ema_power > 0:
        return min(stage.ema_decay, (1.0 - 1.0 / (t + 1)) ** (stage.ema_power + 1))
    return stage.ema_decay
