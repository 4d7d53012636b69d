"""The default device: the GPU when torch sees one, else the CPU.

    from workbench.devices import default_device
    model.to(default_device())          # "cuda" or "cpu"
"""

from __future__ import annotations

import torch


def default_device() -> str:
    """``"cuda"`` when torch sees a CUDA GPU, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def has_gpu() -> bool:
    """Whether torch sees a GPU-like accelerator (CUDA, XPU, ...)."""
    accel = getattr(torch, "accelerator", None)
    return bool(accel.is_available()) if accel is not None else torch.cuda.is_available()
