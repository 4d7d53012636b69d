"""The default device (the GPU when torch sees one, else the CPU), and host tensors copied to a device.

    from workbench.devices import default_device, to_device
    model.to(default_device())          # "cuda" or "cpu"
    x, y = to_device((x, y), "cuda")    # pinned, non-blocking
"""

from __future__ import annotations

import torch


def default_device() -> str:
    """``"cuda"`` when torch sees a CUDA GPU, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def to_device(tensors, device) -> tuple:
    """Host tensors on ``device``: on CUDA through pinned memory and without waiting (a pageable copy would
    block the host until the GPU's queue drains), unchanged on the CPU, a plain copy elsewhere."""
    kind = torch.device(device).type
    if kind == "cpu":
        return tuple(tensors)
    if kind == "cuda":
        return tuple(t.pin_memory().to(device, non_blocking=True) for t in tensors)
    return tuple(t.to(device) for t in tensors)


def has_gpu() -> bool:
    """Whether torch sees a GPU-like accelerator (CUDA, XPU, ...)."""
    accel = getattr(torch, "accelerator", None)
    return bool(accel.is_available()) if accel is not None else torch.cuda.is_available()
