"""A stage folder's contents: what a Trainer writes there, how ``fresh=True`` removes exactly that, and the
lines a stopped or finished stage prints.

    runs/<run>/<name>/checkpoints/   step_NNNNNNN/ (and damaged/: moved aside, never deleted)
                      samples/       step_NNNNNNN.png, one prompt grid per sampled step
                      eval/          scores.json and failure grids (workbench.eval.stage_eval)
                      metrics.jsonl  one line per logged step
                      stage.yaml     the stage as it last trained

``fresh=True`` deletes these entries and nothing else: a user's notes beside them stay, and every
deletion is checked to lie inside the stage folder (``workbench.io.remove_inside``).
"""

from __future__ import annotations

from pathlib import Path

from ..io import remove_inside

STAGE_OUTPUTS = ("checkpoints", "samples", "eval", "metrics.jsonl", "stage.yaml")


def samples_path(stage_dir: str | Path, step: int) -> Path:
    """``<stage_dir>/samples/step_NNNNNNN.png``: the prompt grid of one step."""
    return Path(stage_dir) / "samples" / f"step_{step:07d}.png"


def clear_outputs(stage) -> list[str]:
    """Delete what the workbench wrote in ``stage.stage_dir`` (``STAGE_OUTPUTS``, and TensorBoard logs when the
    stage keeps them); returns the names deleted, for the line that says so."""
    folder = Path(stage.stage_dir)
    names = STAGE_OUTPUTS + ((stage.run,) if stage.tensorboard else ())   # accelerate logs into <stage_dir>/<run>
    removed = []
    for name in names:
        path = folder / name
        if path.exists() or path.is_symlink():
            remove_inside(path, folder)
            removed.append(name)
    return removed


def stopped_line(step: int, checkpoint, signal_name: str) -> str:
    """The one line a run stopped by Ctrl-C, Kernel › Interrupt, SIGTERM or the Stop button prints."""
    how = {"": "interrupted", "SIGINT": "interrupted", "stop": "stopped (Stop button / trainer.stop())"}.get(
        signal_name, f"stopped by {signal_name}")
    return (f"{how} at step {step}; checkpoint {checkpoint}; resume with trainer.run() or the same command "
            f"(it resumes automatically)")
