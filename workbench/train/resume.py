"""Honest resumes: which checkpoint to resume, and which stage changes a resume can apply.

    path, state = resumable_checkpoint(stage.checkpoint_dir, load)   # newest one that verifies *and* loads
    applied = check_resume(path, stage, info.fingerprint)             # WorkbenchError for a change that cannot apply

A resume restores the optimiser, the LR scheduler and the RNG, so a changed learning rate, batch,
schedule, model or noise distribution would silently not apply while the new ``stage.yaml`` said
it did. Those changes are refused, with their old and new values. Changes that do take effect from
the resumed step on (more steps, how often to log, sample or checkpoint) are applied and logged.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from ..config import RESOLUTION_FIELDS, architecture_diff, format_diff, to_dict
from ..errors import InputError, WorkbenchError
from . import checkpoint as ckpt
from .stages import lr_factor

# take effect from the resumed step on (``steps`` also re-spans a cosine schedule, so its LR changes from there);
# micro_batch is not here: the data loader's saved position is counted in micro-batches
APPLICABLE = ("steps", "compile", "activation_checkpointing", "sample_prompts", "sample_every", "sample_steps",
              "sample_cfg_scale", "eval_every", "eval_samples_per_prompt", "checkpoint_every", "keep_last", "log_every",
              "max_nonfinite", "tensorboard")
# where the run lives and how it started, not how it trains: a rerun from another folder may spell them differently
NOT_COMPARED = ("name", "run", "runs_dir", "data", "init_from", "init_mode")


def _plain(value):
    return json.loads(json.dumps(value, default=str))


def stage_changes(saved: dict, current: dict) -> tuple[list[tuple], list[tuple]]:
    """``(applicable, refused)`` lists of ``(field, old, new)`` between a checkpoint's stage and the current one."""
    saved, current = _plain(saved), _plain(current)
    applicable, refused = [], []
    for key in sorted(set(saved) | set(current)):
        if key in NOT_COMPARED or key not in saved or saved.get(key) == current.get(key):
            continue                  # a field the checkpoint's version did not have cannot be compared
        (applicable if key in APPLICABLE else refused).append((key, saved.get(key), current.get(key)))
    return applicable, refused


def check_resume(path: Path, stage, data_fingerprint: str | None = None) -> list[tuple]:
    """Compare ``stage`` (and its prepared data) with what checkpoint ``path`` was trained with.

    Returns the applicable changes ``(field, old, new)`` (log them with ``applied_line`` once the resume
    succeeded); raises ``WorkbenchError`` for changes a resume cannot apply, and for other training data:
    a resume on a different prepared dataset would silently train on it (a stage that starts from
    ``init_from`` on new data is the way to do that).
    """
    config = ckpt.read_config(path) or {}
    saved = config.get("stage") or {}
    applicable, refused = stage_changes(saved, stage.to_dict())
    if refused:
        fields = "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in refused)
        raise WorkbenchError(f"cannot resume {stage.run}/{stage.name} from {path} with changed settings that a resume "
                             f"cannot apply ({fields}): the optimiser, LR schedule and RNG come from the checkpoint. "
                             f"Resume with the old values (they are in {path / ckpt.CONFIG_FILE}), or start over "
                             f"on purpose: fresh=True (--fresh) or another run name")
    data = (config.get("sampling") or {}).get("data") or {}
    if data_fingerprint and data.get("fingerprint") and data["fingerprint"] != data_fingerprint:
        raise WorkbenchError(f"cannot resume {stage.run}/{stage.name} from {path} on other training data: the "
                             f"checkpoint was trained on {data.get('path')} (fingerprint {data['fingerprint']}), the "
                             f"stage now names {stage.data} (fingerprint {data_fingerprint}). Resume with "
                             f"data={data.get('path')}, or train a new stage with init_from={path} on the new data")
    return applicable


def applied_line(stage, applicable: list[tuple]) -> str | None:
    """The one line that says which changes a resume applied (``None`` when there are none)."""
    if not applicable:
        return None
    stretched = " (the LR schedule now spans the new total from this step)" if any(
        k == "steps" for k, _, _ in applicable) and (stage.schedule == "cosine" or stage.cooldown_fraction) else ""
    return (f"{stage.run}/{stage.name}: applied on resume: " +
            ", ".join(f"{k} {old!r} -> {new!r}" for k, old, new in applicable) + stretched)


def resumable_checkpoint(root: Path, load: Callable[[Path], object]):
    """``(path, load(path))`` of the newest checkpoint that verifies and loads, or ``(None, None)`` when there is none.

    Corrupt ones (checksums) and refused ones (an unpickling refusal, a missing part) are skipped with a
    warning. When checkpoints exist but none is usable, raise: starting from step 0 would overwrite them.
    """
    found = ckpt.list_checkpoints(root)
    problems = {}
    for path in reversed(found):
        issues = ckpt.verify_checkpoint(path)
        if not issues:
            try:
                return path, load(path)
            except ckpt.CheckpointError as err:
                issues = [str(err)]
        problems[path] = "; ".join(issues)
        warnings.warn(f"skipping unusable checkpoint {path}: {problems[path]}", stacklevel=2)
    if found:
        listed = "; ".join(f"{p.name}: {why}" for p, why in reversed(list(problems.items())))
        raise WorkbenchError(f"every checkpoint in {root} is unusable ({listed}); nothing was overwritten. Start over "
                             f"on purpose with fresh=True (--fresh) or another run name, or restore a good copy")
    return None, None


def resumed_lines(stage, path: Path, step: int, applied: list[tuple]) -> str:
    """What resuming says: one line (two with applied changes): resuming, finished, or past the stage's steps."""
    name = f"{stage.run}/{stage.name}"
    if step > stage.steps:
        return (f"{name}: already at step {step}, past steps={stage.steps}: nothing to do ({path}); "
                f"to train a shorter stage, use another run name or fresh=True (--fresh)")
    doing = "finished" if step == stage.steps else "resuming"
    line = applied_line(stage, applied)
    return ((line + "\n") if line else "") + (f"{name}: {doing} at step {step} of {stage.steps} from {path} "
                                              "(fresh=True or another run name starts over)")


def start_from(stage, model: torch.nn.Module, ema: torch.nn.Module | None, optimizer) -> dict:
    """``Stage.init_from``: another stage's weights (+EMA), and its optimiser state in ``full`` mode.

    Refuses another architecture (resolution fields aside: a 256 px stage may start a 512 px one).
    """
    path = ckpt.resolve_checkpoint(stage.init_from)
    saved = ckpt.read_config(path)["model"]
    diff = architecture_diff(saved, to_dict(model.arch))
    if diff:
        raise InputError(f"init_from {path} has another architecture ({format_diff(diff, 'checkpoint', 'stage')}); "
                         f"use the same model preset and overrides as the stage it comes from")
    ckpt.load_model_weights(path, model, ignore_fields=RESOLUTION_FIELDS)
    if ema is not None:
        ckpt.load_model_weights(path, ema, ema=ckpt.has_ema(path), ignore_fields=RESOLUTION_FIELDS)
    if stage.init_mode == "full" and optimizer is not None:
        carry_optimizer(stage, optimizer)
    return {"path": str(path), "mode": stage.init_mode}


def carry_optimizer(stage, optimizer) -> None:
    """``init_mode: full``: the ``init_from`` checkpoint's AdamW moments and step counts, with this stage's LR,
    betas and weight decay (loading restores the old stage's). ``optimizer`` may be a sharded model's
    ``FullOptimizerState`` view; its groups are read after loading, which may replace them."""
    ckpt.load_optimizer_state(ckpt.resolve_checkpoint(stage.init_from), optimizer)
    for group in optimizer.param_groups:
        base = stage.lr * (stage.moe_lr_scale if group.get("name") == "moe" else 1.0)
        group.update(initial_lr=base, lr=base * lr_factor(0, stage), betas=stage.betas,
                     weight_decay=stage.weight_decay)


def resume_trainer(trainer, resume) -> str | None:
    """Restore ``trainer`` from a checkpoint of its stage (``resume``: "auto", "never"/None or a path); its path.

    "auto" takes the newest checkpoint that verifies and loads (all unusable: an error, not step 0); none at
    all is a fresh start, which drops an earlier run's never-checkpointed metrics. The model, optimiser,
    scheduler, EMA, RNG, loader position, REPA projector and fp16 loss scale are restored, and the metrics
    log is cut back to the resumed step.
    """
    root = trainer.stage.checkpoint_dir
    if resume in (None, "never"):
        if ckpt.list_checkpoints(root):
            raise InputError(f"{root} already has checkpoints; resume with resume='auto' (--resume auto) or "
                             f"choose another run/stage name")
        return None
    applied = {}

    def load(path):
        applied[path] = check_resume(path, trainer.stage, trainer.info.fingerprint)   # refuses what cannot apply
        model, optimizer, ema = trainer.checkpoint_views()
        return ckpt.load_checkpoint(path, model=model, optimizer=optimizer, scheduler=trainer.scheduler, ema=ema,
                                    map_location=trainer.accelerator.device, verify=resume != "auto")

    if resume == "auto":                     # the newest usable one; all unusable: an error, not step 0
        path, state = resumable_checkpoint(root, load)
    else:
        path = ckpt.resolve_checkpoint(resume)
        state = load(path)
    if path is None:
        if trainer.accelerator.is_main_process:   # a fresh start: drop an earlier run's metrics (never checkpointed)
            if trainer.metrics.read():
                print(f"{trainer.stage.run}/{trainer.stage.name}: starting at step 0 (the earlier run in "
                      f"{trainer.stage.stage_dir} left no valid checkpoint)", flush=True)
            trainer.metrics.truncate_after(0)
        return None
    ckpt.restore_rng(state.rng)
    trainer.step_count = trainer._checkpointed_step = state.step
    trainer.loader.load_state_dict(state.loader)
    trainer.nonfinite_total = state.extra.get("nonfinite_total", 0)
    if trainer.repa is not None and state.extra.get("repa"):
        trainer.repa.projector.load_state_dict(state.extra["repa"])
    if trainer.accelerator.scaler is not None and state.extra.get("grad_scaler"):
        trainer.accelerator.scaler.load_state_dict(state.extra["grad_scaler"])   # fp16: the loss scale
    trainer.history = [r for r in trainer.metrics.read() if r.get("step", 0) <= state.step]
    if trainer.accelerator.is_main_process:
        trainer.metrics.truncate_after(state.step)
        print(resumed_lines(trainer.stage, path, state.step, applied[path]), flush=True)
    return str(path)
