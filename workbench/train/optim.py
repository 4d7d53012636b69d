"""The optimiser of a stage: AdamW's parameter groups and kernel, and gradient clipping in three ops.

The paper's optimiser is AdamW on all parameters, with the MoE experts at ``moe_lr_scale`` times the
learning rate. Both kernels here exist to keep a step's dispatched ops few (docs/benchmarks.md):
torch's per-parameter AdamW costs ~10 ops per parameter tensor and ``clip_grad_norm_`` one
``.to`` per parameter on the CPU::

    optimizer = make_optimizer(model, stage, torch.device("cpu"))
    norm = clip_grad_norm(list(model.parameters()), max_norm=1.0)
"""

from __future__ import annotations

import torch

from ..model.moe import ExpertChoiceMoE


def param_groups(model: torch.nn.Module, stage, repa=None) -> list[dict]:
    """AdamW groups: MoE parameters get ``lr * moe_lr_scale`` (the paper's intended half LR); REPA's projector."""
    moe = {id(p) for m in model.modules() if isinstance(m, ExpertChoiceMoE) for p in m.parameters()}
    dense = [p for p in model.parameters() if id(p) not in moe]
    experts = [p for p in model.parameters() if id(p) in moe]
    groups = [{"params": dense, "name": "dense"}]
    if experts:
        groups.append({"params": experts, "name": "moe", "lr": stage.lr * stage.moe_lr_scale})
    if repa is not None:
        groups.append({"params": list(repa.projector.parameters()), "name": "repa"})
    return groups


def adamw_kernel(stage, device: torch.device) -> dict:
    """AdamW's implementation: the fused kernel (one op for all parameters, CPU and CUDA), else foreach.

    Fused and torch's per-parameter loop agree to float rounding (tests/train/test_trainer.py).
    FSDP's sharded parameters take the foreach kernel.
    """
    if not stage.fsdp and device.type in ("cpu", "cuda"):
        return {"fused": True}
    return {"foreach": True}


def make_optimizer(model: torch.nn.Module, stage, device: torch.device, repa=None) -> torch.optim.AdamW:
    """The stage's AdamW over :func:`param_groups`, with :func:`adamw_kernel`."""
    return torch.optim.AdamW(param_groups(model, stage, repa), lr=stage.lr, betas=stage.betas,
                             weight_decay=stage.weight_decay, **adamw_kernel(stage, device))


def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_``'s arithmetic (L2 norm, same epsilon) in three dispatched ops.

    Returns the total norm before clipping; ``max_norm=inf`` only measures it.
    """
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))      # ()
    torch._foreach_mul_(grads, (max_norm / (total + 1e-6)).clamp(max=1.0))
    return total


def update_ema(ema: list[torch.Tensor], raw: list[torch.Tensor], decay: float, finite: torch.Tensor) -> None:
    """``ema += (1 - decay) * finite * (raw - ema)`` in three foreach ops; ``decay == 0`` copies ``raw``.

    ``finite`` (a 0-dim tensor on the device, 0 for a skipped non-finite step) is a tensor weight, so
    nothing is read back from the device (``_foreach_lerp_`` would read a tensor weight as a number).
    A skipped step left ``raw`` as it was, so the copy phase needs no weight.
    """
    with torch.no_grad():
        if decay == 0.0:
            torch._foreach_copy_(ema, raw)
        else:
            step = torch._foreach_sub(raw, ema)
            torch._foreach_mul_(step, (1.0 - decay) * finite.float())
            torch._foreach_add_(ema, step)
