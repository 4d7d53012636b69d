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
from pathlib import Path
from typing import Callable

from ..errors import WorkbenchError
from . import checkpoint as ckpt

# take effect from the resumed step on (``steps`` also re-spans a cosine schedule, so its LR changes from there);
# micro_batch is not here: the data loader's saved position is counted in micro-batches
APPLICABLE = ("steps", "compile", "sample_prompts", "sample_every", "sample_steps", "sample_cfg_scale",
              "eval_every", "eval_samples_per_prompt", "checkpoint_every", "keep_last", "log_every", "max_nonfinite",
              "tensorboard")
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
        k == "steps" for k, _, _ in applicable) and stage.schedule == "cosine" else ""
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
        warnings.warn(f"skipping unusable checkpoint {path}: {problems[path]}")
    if found:
        listed = "; ".join(f"{p.name}: {why}" for p, why in reversed(list(problems.items())))
        raise WorkbenchError(f"every checkpoint in {root} is unusable ({listed}); nothing was overwritten. Start over "
                             f"on purpose with fresh=True (--fresh) or another run name, or restore a good copy")
    return None, None
