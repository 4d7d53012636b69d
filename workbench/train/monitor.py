"""Monitoring: metrics.jsonl and sample grids of fixed prompts.

    log = MetricsLog("runs/demo/stage1/metrics.jsonl"); log.write({"step": 10, "loss": 0.4})
    grid = PromptGrid(info, ["a red circle"], steps=30, cfg_scale=5.0)
    path = grid.save(model, "runs/demo/stage1/samples/step_0000100.png")
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..diffusion import DEFAULT_SAMPLER, EDMConfig, sample
from ..errors import writing
from ..images import labelled_grid, save_png
from ..io import atomic_write_text


class MetricsLog:
    """Append-only JSON-lines log (one dict per line, flushed each write)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        """Append one record (a full disk is one line naming this file; a torn line is repaired on resume)."""
        with writing(self.path.name, self.path.parent), self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        """All records written so far (an empty list when there is no file).

        A torn last line (a process killed mid-write) is ignored.
        """
        if not self.path.is_file():
            return []
        records = []
        for line in self.path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def truncate_after(self, step: int) -> None:
        """Drop records of steps after ``step`` (a resumed run rewrites them); writes nothing when none are."""
        records = self.read()
        kept = [r for r in records if r.get("step", 0) <= step]
        torn = self.path.is_file() and len(records) != len(self.path.read_text().splitlines())
        if len(kept) == len(records) and not torn:
            return                      # nothing to drop: do not rewrite (the disk may be full)
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))


class PromptGrid:
    """Samples a fixed prompt set with a model and decodes it with the prepared data's codec.

    The text encoder and codec are the ones recorded in the prepared dataset, so prompts are
    embedded exactly as the training captions were. They load on first use.
    """

    def __init__(self, info, prompts, steps: int = 30, cfg_scale: float = 5.0, seed: int = 0,
                 edm: EDMConfig | None = None, resolution: int | None = None, sampler: str = DEFAULT_SAMPLER,
                 columns: int | None = None):
        self.info, self.prompts, self.steps, self.cfg_scale, self.seed = info, list(prompts), steps, cfg_scale, seed
        self.edm = edm or EDMConfig()
        self.resolution, self.sampler, self.columns = resolution, sampler, columns
        self._embeddings = None
        self._codec = None

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(caption (N, L, D), mask (N, L)) of the prompts, computed once."""
        if self._embeddings is None:
            from ..data.prepared_format import open_prepared_text_encoder

            self._embeddings = open_prepared_text_encoder(self.info).encode(self.prompts)
        return self._embeddings

    @property
    def codec(self):
        """The prepared data's latent codec."""
        if self._codec is None:
            from ..data.prepared_format import open_prepared_codec

            self._codec = open_prepared_codec(self.info)
        return self._codec

    def images(self, model, device=None) -> np.ndarray:
        """Sample every prompt once with ``model``: uint8 (N, H, W, 3)."""
        caption, mask = self.embeddings()
        side = self.codec.latent_size(self.resolution) if self.resolution else None
        latents = sample(model, caption, mask, steps=self.steps, cfg_scale=self.cfg_scale, seed=self.seed,
                         sampler=self.sampler, latent_size=side, edm=self.edm, device=device)
        return self.codec.decode(latents)

    def save(self, model, path: str | Path, device=None) -> Path:
        """Sample the prompts and write them as one PNG grid, each tile upscaled and labelled with its prompt."""
        return save_png(labelled_grid(self.images(model, device), self.prompts, self.columns), path)
