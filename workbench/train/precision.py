"""``mixed_precision: bf16-mixed``: a bf16 copy of the model computes, fp32 master weights are trained
(and fp16's loss-scaler state for checkpoints, ``grad_scaler_state``).

autocast (``mixed_precision: bf16``) keeps fp32 weights and re-casts every weight on every forward:
on a GPU that is thousands of small cast kernels per step (docs/benchmarks.md). Here the casts happen
once per step and at the module boundary only, as FSDP2's ``MixedPrecisionPolicy`` does:

- the compute copy holds bf16 weights; its forward casts floating inputs to bf16 (except the mask
  noise, whose argsort picks the kept patches, so masks are the ones fp32 training draws);
- after the backward pass its bf16 gradients are copied into fp32 gradients of the master weights
  (one op), which the optimiser, clipping, the EMA, checkpoints and sampling use;
- after the optimiser step the master weights are copied back into the compute copy (one op).

    precision = BF16Compute(model)       # model: the fp32 master; precision.model trains
    ...backward on precision.model...; precision.grads_to_master(); optimizer.step(); precision.weights_from_master()
"""

from __future__ import annotations

import copy

import torch

KEEP_FP32 = ("mask_noise",)          # forward arguments left in fp32 (the patch mask's ordering)


def _cast_inputs(module, args, kwargs):
    def cast(value):
        return value.to(torch.bfloat16) if torch.is_tensor(value) and value.is_floating_point() else value
    return tuple(cast(a) for a in args), {k: (v if k in KEEP_FP32 else cast(v)) for k, v in kwargs.items()}


class BF16Compute:
    """A bf16 compute copy of an fp32 ``master`` model, and the two copies between them each step."""

    def __init__(self, master: torch.nn.Module):
        self.master = master
        self.model = copy.deepcopy(master).bfloat16()                     # nn.Module.bfloat16: floats only
        self.model.register_forward_pre_hook(_cast_inputs, with_kwargs=True)
        self._work = list(self.model.parameters())
        self._fp32 = list(master.parameters())

    def grads_to_master(self) -> None:
        """The compute copy's gradients into the master's fp32 ``.grad`` (kept between steps, overwritten)."""
        targets, grads = [], []
        for m, w in zip(self._fp32, self._work):
            if w.grad is None:                                            # no gradient: AdamW skips it, as in fp32
                m.grad = None
                continue
            if m.grad is None:                                            # allocated once, then reused
                m.grad = torch.empty_like(m)
            targets.append(m.grad)
            grads.append(w.grad)
        torch._foreach_copy_(targets, grads)

    def weights_from_master(self) -> None:
        """The master weights, rounded to bf16, into the compute copy (after each update and on resume)."""
        with torch.no_grad():
            torch._foreach_copy_(self._work, self._fp32)

    def zero_grad(self) -> None:
        """Drop the compute copy's gradients (the master's are overwritten by the next ``grads_to_master``)."""
        self.model.zero_grad(set_to_none=True)


def grad_scaler_state(accelerator) -> dict | None:
    """fp16's GradScaler state (loss scale, growth tracker) as plain numbers for a checkpoint; None otherwise."""
    scaler = accelerator.scaler
    if scaler is None:
        return None
    return {k: v.item() if torch.is_tensor(v) else v for k, v in scaler.state_dict().items()}
