"""What an exact resume needs besides tensors: ``TrainingState`` and the RNG states it captures."""

from __future__ import annotations

import random
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from .files import STATE_FILE, CheckpointError


@dataclass
class TrainingState:
    """Everything besides module/optimizer tensors that an exact resume needs.

    All values must be readable by ``torch.load(weights_only=True)``: ints, floats, strings,
    bools, None, lists, dicts and tensors (``save_checkpoint`` checks this before writing).
    """

    step: int                                    # optimiser steps completed
    rng: dict = field(default_factory=dict)      # from capture_rng()
    loader: dict = field(default_factory=dict)   # the data loader's state_dict()
    extra: dict = field(default_factory=dict)    # e.g. {"stage": "stage1", "nonfinite_steps": 0}

    def to_dict(self) -> dict:
        """A plain dict (what ``state.pt`` holds)."""
        return {"step": int(self.step), "rng": self.rng, "loader": self.loader, "extra": self.extra}

    @classmethod
    def from_dict(cls, values: Mapping) -> TrainingState:
        """Rebuild from ``to_dict()`` output; raise ``CheckpointError`` when ``step`` is missing."""
        if "step" not in values:
            raise CheckpointError(f"{STATE_FILE} has no 'step' (keys: {sorted(values)})")
        return cls(step=int(values["step"]), rng=dict(values.get("rng") or {}),
                   loader=dict(values.get("loader") or {}), extra=dict(values.get("extra") or {}))


def capture_rng(generators: Mapping[str, torch.Generator] | None = None) -> dict:
    """The states of python ``random``, numpy's global RNG, torch CPU, every CUDA device and ``generators``.

    Only tensors, ints, floats and None are stored, so the result survives
    ``torch.save`` / ``torch.load(weights_only=True)``.
    """
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "generators": {name: gen.get_state() for name, gen in (generators or {}).items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping, generators: Mapping[str, torch.Generator] | None = None) -> None:
    """Put every RNG captured by :func:`capture_rng` back; the next random numbers then repeat.

    Raises ``KeyError`` naming a generator in ``generators`` that the state does not hold.
    """
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].cpu().numpy().astype(np.uint32), int(npy["pos"]),
                         int(npy["has_gauss"]), float(npy["cached_gaussian"])))
    torch.set_rng_state(state["torch"].cpu())
    _restore_cuda_rng(state.get("cuda"))
    saved = state.get("generators", {})
    for name, gen in (generators or {}).items():
        if name not in saved:
            raise KeyError(f"the RNG state has no generator {name!r} (it has: {sorted(saved) or 'none'})")
        gen.set_state(saved[name].cpu())


def _restore_cuda_rng(cuda_states: list | None) -> None:
    """Restore per-device CUDA RNG states, warning when the device count changed."""
    if not cuda_states or not torch.cuda.is_available():
        return
    count = torch.cuda.device_count()
    if len(cuda_states) != count:
        warnings.warn(f"RNG state was captured on {len(cuda_states)} CUDA devices, restoring on {count}: "
                      "only the first min(both) devices are restored", stacklevel=2)
    for device, device_state in enumerate(cuda_states[:count]):
        torch.cuda.set_rng_state(device_state.cpu(), device)
