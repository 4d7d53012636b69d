"""FSDP2 for the Trainer (``Stage.fsdp``): each block and the whole model sharded over every rank with
``torch.distributed.fsdp.fully_shard``, on GPUs (NCCL) and on CPUs (gloo) alike.

The Trainer shards the model and its EMA the same way, so the EMA update is local to each rank's shard
(no communication). Checkpoints hold the **full** weights, EMA and optimiser state, gathered to rank 0
and written in the usual format, so a checkpoint of a sharded run samples on one process like any other
and resumes on any number of ranks. accelerate only launches the processes (``accelerate launch
--multi_gpu``, docs/benchmarks.md, "Beyond one machine"); its own FSDP wrapping is not used, so the
code path tested on CPUs here is the one that runs on GPUs::

    mesh = shard_model(model, device)            # in place; then build the optimiser on model.parameters()
    weights = FullState(model)                   # .state_dict() gathers (every rank calls it), rank 0 gets it
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.distributed as dist


def check_fsdp(stage, num_processes: int) -> None:
    """``InputError`` for a ``Stage.fsdp`` run this module cannot shard: one process, accelerate's own FSDP
    launch, or an option not supported with sharding yet (REPA, ``eval_every``)."""
    from ..errors import InputError

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        raise InputError("Stage.fsdp shards the model with FSDP2 in the Trainer; launch without accelerate's FSDP "
                         "(--use_fsdp or an FSDP config file): accelerate launch --multi_gpu --num_processes N "
                         "-m workbench train --config STAGE.yaml")
    if num_processes < 2:
        raise InputError(f"Stage.fsdp shards the model across processes, but this run has {num_processes}; set "
                         f"fsdp: false, or launch N of them: accelerate launch --multi_gpu --num_processes N "
                         f"-m workbench train --config STAGE.yaml")
    unsupported = [name for name, on in (("repa_weight > 0", stage.repa_weight > 0),
                                         ("eval_every > 0", stage.eval_every > 0)) if on]
    if unsupported:
        raise InputError(f"Stage.fsdp does not support {', '.join(unsupported)} yet; set fsdp: false (DDP) for them")


def shard_model(model: torch.nn.Module, device: torch.device, mesh=None):
    """Shard each mixer and backbone block, then the root, over a 1-D mesh of every rank; returns the mesh.

    The mesh is passed explicitly, also on CPUs (gloo), where the default would look for a GPU.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = mesh if mesh is not None else init_device_mesh(device.type, (dist.get_world_size(),))
    for block in [*model.mixer, *model.blocks]:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return mesh


def local_tensors(params) -> list[torch.Tensor]:
    """Each sharded parameter's local shard (a view: in-place updates change the parameter)."""
    return [p.to_local() if hasattr(p, "to_local") else p for p in params]


def full_norm(norm: torch.Tensor) -> torch.Tensor:
    """A gradient norm of sharded gradients (a DTensor) as a plain tensor, the same on every rank."""
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


class FullState:
    """A sharded module seen as a plain one by the checkpoint code: full state dicts in and out.

    ``state_dict()`` gathers every shard (a collective: every rank calls it) and returns the full
    weights on rank 0 (on the CPU; other ranks get ``{}``); ``load_state_dict(full)`` scatters a full
    state dict that every rank has read. ``arch`` and ``config`` are the module's own.
    """

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.arch, self.config = getattr(module, "arch", None), getattr(module, "config", None)

    def state_dict(self) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(self.module, options=_options(cpu_offload=True))

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(self.module, dict(state), options=_options())


class FullOptimizerState:
    """The optimiser of a sharded model, with full (gathered) state dicts keyed by parameter name."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, getattr(optimizer, "optimizer", optimizer)

    @property
    def param_groups(self) -> list[dict]:
        """The optimiser's own (live) parameter groups: their LR, betas and weight decay can be set here."""
        return self.optimizer.param_groups

    def state_dict(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(self.model, self.optimizer, options=_options(cpu_offload=True))

    def load_state_dict(self, state: dict) -> None:
        """Scatter a full optimiser state dict: keyed by parameter name (a sharded run's checkpoint) or by
        index (a one-process or DDP run's, mapped to names through this optimiser's groups)."""
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        if any(isinstance(p, int) for group in state["param_groups"] for p in group["params"]):
            state = self._by_name(state)
        set_optimizer_state_dict(self.model, self.optimizer, state, options=_options())

    def _by_name(self, state: dict) -> dict:
        names = {id(p): name for name, p in self.model.named_parameters()}
        index_to_name = {}
        for saved, ours in zip(state["param_groups"], self.optimizer.param_groups):
            index_to_name.update(zip(saved["params"], (names[id(p)] for p in ours["params"])))
        return {"state": {index_to_name[i]: value for i, value in state["state"].items()},
                "param_groups": [{**g, "params": [index_to_name[i] for i in g["params"]]}
                                 for g in state["param_groups"]]}


class Snapshot:
    """A state dict gathered once (every rank), handed to the checkpoint writer on rank 0 as ``state_dict()``."""

    def __init__(self, view):
        self.arch, self.config = getattr(view, "arch", None), getattr(view, "config", None)
        self._state = view.state_dict()

    def state_dict(self):
        return self._state


def plain_copy(module: torch.nn.Module, state: Mapping[str, torch.Tensor], device) -> torch.nn.Module:
    """An unsharded MicroDiT with ``module``'s config and a full state dict (for sampling on rank 0)."""
    from ..config import to_dict
    from ..model import MicroDiT

    copy = MicroDiT(**to_dict(module.arch))
    copy.load_state_dict(dict(state))
    return copy.to(device).eval().requires_grad_(False)
