"""Sampling from checkpoints: rebuild the model (EMA weights when present) and sample prompts.

    model = load_checkpoint_model("runs/demo/stage4")                 # newest checkpoint, EMA weights
    sample_checkpoint("runs/demo/stage4", ["a red circle"], out="grid.png")
"""

from __future__ import annotations

from pathlib import Path

from ..devices import default_device
from ..model import MicroDiT
from . import checkpoint as ckpt


def load_checkpoint_model(spec: str | Path, use_ema: bool = True) -> MicroDiT:
    """The model of a checkpoint (or of a stage folder's newest checkpoint), in eval mode."""
    path = ckpt.resolve_checkpoint(spec)
    model = MicroDiT(**ckpt.read_config(path)["model"])
    ckpt.load_model_weights(path, model, ema=use_ema and ckpt.has_ema(path))
    return model.eval()


def checkpoint_data_info(spec: str | Path):
    """The ``PreparedInfo`` of the data a checkpoint was trained on (for its text encoder and codec)."""
    from ..data.prepare import PreparedInfo

    path = ckpt.resolve_checkpoint(spec)
    stage = ckpt.read_config(path).get("stage") or {}
    if "data" not in stage:
        raise ValueError(f"{path} records no training data, so its text encoder and codec are unknown")
    try:
        return PreparedInfo.read(stage["data"])
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path} was trained on {stage['data']!r}, which is needed for its text encoder "
                                f"and codec but is missing; run from the folder the training ran in") from err


def sample_checkpoint(spec: str | Path, prompts: list[str], out: str | Path = "samples.png", steps: int = 30,
                      cfg_scale: float = 5.0, seed: int = 0, per_prompt: int = 1, use_ema: bool = True,
                      sampler: str = "heun", device: str | None = None) -> Path:
    """Sample ``per_prompt`` images of each prompt from a checkpoint into one PNG grid (a row per prompt).

    ``device`` defaults to the GPU when torch sees one, else the CPU; a seed gives the same
    initial noise on every device (it is drawn on the CPU).
    """
    from ..diffusion import EDMConfig
    from .monitor import PromptGrid

    path = ckpt.resolve_checkpoint(spec)   # once: a stage folder's newest checkpoint is found by verifying them
    device = device or default_device()
    model = load_checkpoint_model(path, use_ema).to(device)
    info = checkpoint_data_info(path)
    stage = ckpt.read_config(path)["stage"]
    grid = PromptGrid(info, [p for p in prompts for _ in range(per_prompt)], steps=steps, cfg_scale=cfg_scale,
                      seed=seed, resolution=stage.get("resolution"), sampler=sampler, columns=per_prompt,
                      edm=EDMConfig(sigma_data=stage.get("sigma_data", 0.9)))
    return grid.save(model, out, device=device)
