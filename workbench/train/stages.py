"""Training stages: one validated dataclass per stage, YAML files, and the checks run before training.

The paper trains in four stages (256 px masked, 256 px unmasked, 512 px masked, 512 px
unmasked); each stage starts from the previous one's final checkpoint (``init_from``)::

    stage = Stage.from_yaml("configs/demo/stage1.yaml", steps=200)
    stage.stage_dir            # runs/<run>/<name>
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


import torch

from ..config import check_known_keys, dump_yaml, from_dict, load_yaml, require, to_dict
from ..data.prepared_format import PreparedInfo
from ..diffusion import EDMConfig
from ..model import preset_config
from . import checkpoint as ckpt

DEFAULT_PROMPTS = ("a red circle", "a blue square", "a green triangle", "a yellow star",
                   "a large purple ring", "an orange cross", "two red circles", "a blue star above a green square")
SCHEDULES = ("cosine", "constant")
PRECISIONS = ("no", "bf16", "fp16")
INIT_MODES = ("weights", "full")


# the Python types each annotation accepts (an int is a fine float; a bool is never a number)
_FIELD_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "list": (list, tuple),
                "dict": (dict,), "str | None": (str, type(None)), "tuple[float, float]": (list, tuple)}


def is_single_path_component(name: str) -> bool:
    """True for a folder name that stays where it is put: ``stage1``, ``demo-2``; never ``..``, ``a/b``, ``.x``.

    ``Stage.name`` and ``Stage.run`` must be one: ``--fresh`` and retention delete inside
    ``<runs_dir>/<run>/<name>``, so a name that climbs out would delete another run's files.
    """
    return (isinstance(name, str) and bool(name) and not name.startswith(".") and "\0" not in name
            and "/" not in name and "\\" not in name)


FOLDER_NAME_RULE = "one folder name: not empty, no '/' or '\\', not '.' or '..', no leading '.'"


def _coerce(value: Any, annotation: str) -> Any:
    """Paths to str, numpy / other numbers to int or float, for the fields that take them; others unchanged."""
    if annotation in ("str", "str | None") and isinstance(value, os.PathLike):
        return os.fspath(value)
    if annotation == "int" and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if annotation == "float" and isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value) if not isinstance(value, int) else value
    return value


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
    final_lr_fraction: float = 0.33            # cosine end point (paper stage 1: 7.9e-5 / 2.4e-4)
    weight_decay: float = 0.1                  # AdamW weight decay, on all parameters
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    grad_clip: float = 0.25                    # max global gradient norm (0 = no clipping)
    ema_decay: float = 0.0                     # EMA of the weights (0 = no EMA)
    ema_start: int = 0                         # EMA copies the weights until this step, then averages
    ema_power: float = 0.0                     # > 0: warm-up, decay min(ema_decay, (1 - 1/t)^(power + 1)) (EDM2)
    caption_dropout: float = 0.1               # probability of training on the null caption (for CFG)
    p_mean: float = -0.6                       # EDM training noise: mean of ln sigma
    p_std: float = 1.2                         # EDM training noise: std of ln sigma
    sigma_data: float = 0.9                    # EDM sigma_data
    mixed_precision: str = "no"                # no | bf16 | fp16 (fp16 is for GPUs only)
    compile: bool = False                      # torch.compile the model
    fsdp: bool = False                         # shard with FSDP instead of DDP (multi-GPU launches only)
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
        own = "Stage"
        for f in dataclasses.fields(self):             # types first, so the range checks below cannot TypeError
            value, allowed = _coerce(getattr(self, f.name), str(f.type)), _FIELD_TYPES[str(f.type)]
            require(isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed), own, f.name,
                    f"a value of type {f.type}", value)
            setattr(self, f.name, value)
        require(all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in self.betas), own, "betas",
                "two numbers", self.betas)
        self.betas = tuple(float(b) for b in self.betas)
        self.sample_prompts = [str(p) for p in self.sample_prompts]
        for name in ("steps", "global_batch", "micro_batch", "resolution", "sample_steps"):
            value = getattr(self, name)
            require(isinstance(value, int) and value > 0, own, name, "a positive integer", value)
        require(isinstance(self.moe_lr_scale, (int, float)) and self.moe_lr_scale > 0, own, "moe_lr_scale",
                "a positive number", self.moe_lr_scale)
        require(isinstance(self.repa_weight, (int, float)) and self.repa_weight >= 0, own, "repa_weight",
                "a number >= 0", self.repa_weight)
        require(isinstance(self.repa_depth, int) and self.repa_depth >= 1, own, "repa_depth", "a block number >= 1",
                self.repa_depth)
        require(self.repa_encoder == "codec" or str(self.repa_encoder).startswith("vae:"), own, "repa_encoder",
                "'codec' or 'vae:PATH'", self.repa_encoder)
        require(isinstance(self.eval_samples_per_prompt, int) and self.eval_samples_per_prompt > 0, own,
                "eval_samples_per_prompt", "a positive integer", self.eval_samples_per_prompt)
        for name in ("warmup_steps", "ema_start", "sample_every", "eval_every", "checkpoint_every", "log_every",
                     "seed"):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 0, own, name, "an integer >= 0", value)
        require(self.keep_last >= 1, own, "keep_last", "at least 1", self.keep_last)
        require(self.max_nonfinite >= 1, own, "max_nonfinite", "at least 1", self.max_nonfinite)
        require(isinstance(self.lr, (int, float)) and self.lr > 0, own, "lr", "a positive number", self.lr)
        require(0.0 <= self.mask_ratio < 1.0, own, "mask_ratio", "a value in [0, 1)", self.mask_ratio)
        require(0.0 <= self.caption_dropout < 1.0, own, "caption_dropout", "a value in [0, 1)", self.caption_dropout)
        require(0.0 <= self.ema_decay < 1.0, own, "ema_decay", "a value in [0, 1)", self.ema_decay)
        require(self.ema_power >= 0, own, "ema_power", "a number >= 0 (0: a fixed decay)", self.ema_power)
        require(0.0 <= self.final_lr_fraction <= 1.0, own, "final_lr_fraction", "a value in [0, 1]",
                self.final_lr_fraction)
        require(self.weight_decay >= 0, own, "weight_decay", "a number >= 0", self.weight_decay)
        require(self.grad_clip >= 0, own, "grad_clip", "a number >= 0", self.grad_clip)
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), own, "betas", "two values in [0, 1)",
                self.betas)
        require(self.p_std > 0 and self.sigma_data > 0, own, "p_std/sigma_data", "positive numbers",
                (self.p_std, self.sigma_data))
        require(self.sample_cfg_scale >= 1.0, own, "sample_cfg_scale", "a guidance scale >= 1", self.sample_cfg_scale)
        require(self.schedule in SCHEDULES, own, "schedule", " or ".join(SCHEDULES), self.schedule)
        require(self.mixed_precision in PRECISIONS, own, "mixed_precision", " | ".join(PRECISIONS),
                self.mixed_precision)
        require(self.init_mode in INIT_MODES, own, "init_mode", " or ".join(INIT_MODES), self.init_mode)
        require(self.global_batch % self.micro_batch == 0, own, "global_batch",
                f"a multiple of micro_batch={self.micro_batch}", self.global_batch)
        require(isinstance(self.model_overrides, dict), own, "model_overrides", "a mapping of MicroDiTConfig fields",
                self.model_overrides)
        for name in ("name", "run"):
            value = getattr(self, name)
            require(is_single_path_component(value), own, name, FOLDER_NAME_RULE, value)
        from ..model import preset_config

        preset_config(self.model, **self.model_overrides)  # unknown preset or bad override fails here

    def architecture(self) -> dict:
        """The ``MicroDiTConfig`` (as a dict) this stage trains: its preset with ``model_overrides``."""
        from ..model import preset_config

        return to_dict(preset_config(self.model, **self.model_overrides))

    # ------------------------------------------------------------------ paths
    @property
    def edm(self) -> EDMConfig:
        """The stage's EDM constants (σ_data, P_mean, P_std) as the loss and samplers take them."""
        return EDMConfig(sigma_data=self.sigma_data, p_mean=self.p_mean, p_std=self.p_std)

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
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "Stage":
        """Load a stage YAML file, then apply field overrides (like ``--set key=value``)."""
        return load_yaml(cls, path, **overrides)

    def to_yaml(self, path: str | Path) -> None:
        """Write this stage as YAML."""
        dump_yaml(self, path)

    def to_dict(self) -> dict:
        """Plain dict of every field."""
        return to_dict(self)

    def replace(self, **changes: Any) -> "Stage":
        """A validated copy with some fields changed."""
        check_known_keys(type(self), changes, what="Stage")
        return from_dict(type(self), {**self.to_dict(), **changes})


def check_stage(stage: Stage, num_processes: int = 1) -> PreparedInfo:
    """Everything that can be checked before training starts; returns the prepared data's info.

    Raises ``ValueError`` / ``FileNotFoundError`` naming the field and the fix.
    """
    if stage.global_batch % (stage.micro_batch * num_processes):
        raise ValueError(f"Stage.global_batch: expected a multiple of micro_batch x processes = "
                         f"{stage.micro_batch} x {num_processes}, got {stage.global_batch}")
    info = PreparedInfo.read(stage.data)
    if stage.resolution not in info.resolutions:
        raise ValueError(f"Stage.resolution: {stage.resolution} px was not prepared in {stage.data} (it has "
                         f"{', '.join(map(str, info.resolutions))}); prepare it with --resolutions")
    arch = preset_config(stage.model, **stage.model_overrides)
    channels, side, _ = info.latent_shapes[stage.resolution]
    if side % arch.patch_size:
        raise ValueError(f"Stage.resolution: {stage.resolution} px gives {side}x{side} latents, which patch_size="
                         f"{arch.patch_size} cannot tile; choose a resolution whose latent side is a multiple of it")
    if channels != arch.in_channels or info.caption_dim != arch.caption_dim:
        raise ValueError(f"Stage.model: {stage.model} expects {arch.in_channels}-channel latents and "
                         f"{arch.caption_dim}-d captions, but {stage.data} has {channels} channels and "
                         f"{info.caption_dim}-d captions; set model_overrides in_channels/caption_dim")
    if stage.init_from is not None:
        ckpt.resolve_checkpoint(stage.init_from)   # FileNotFoundError naming the path
    if stage.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("Stage.mixed_precision: fp16 on CPU is ~100x slower than fp32; use 'bf16' or 'no'")
    return info


def lr_factor(step: int, stage: Stage) -> float:
    """Learning-rate multiplier at ``step``: linear warmup, then cosine to ``final_lr_fraction`` or constant."""
    if stage.warmup_steps and step < stage.warmup_steps:
        return (step + 1) / stage.warmup_steps
    if stage.schedule == "constant":
        return 1.0
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
