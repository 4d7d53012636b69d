"""The stage's ``accelerate.Accelerator``: one process, ``accelerate launch`` / torchrun, GPU or CPU.

    acc = make_accelerator(stage)      # what Trainer(stage) builds when no accelerator is passed
"""

from __future__ import annotations

import os

from ..devices import has_gpu
from .sharding import check_fsdp
from .stages import Stage


def make_accelerator(stage: Stage):
    """The stage's ``accelerate.Accelerator``: joins a launched process group also without a GPU.

    accelerate only builds a gloo (CPU) process group when asked to run on the CPU; without that,
    ``accelerate launch --multi_gpu`` / ``torchrun`` on a CPU machine start N independent
    single-process trainings that overwrite each other's checkpoints. In a single process (a
    notebook), a stage whose ``mixed_precision`` differs from the previous stage's resets
    accelerate's process-wide state instead of failing.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, is_initialized

    world = int(os.environ.get("WORLD_SIZE", "1"))
    autocast = "no" if stage.mixed_precision == "bf16-mixed" else stage.mixed_precision   # bf16-mixed: the Trainer's
    if world == 1 and is_initialized() and AcceleratorState().mixed_precision != autocast:
        AcceleratorState._reset_state()
    acc = Accelerator(mixed_precision=autocast, cpu=world > 1 and not has_gpu(),
                      log_with="tensorboard" if stage.tensorboard else None, project_dir=str(stage.stage_dir))
    if world > 1 and acc.num_processes == 1:
        raise RuntimeError(f"the launcher started {world} processes (WORLD_SIZE) but accelerate joined "
                           f"{acc.num_processes}; on a CPU machine use `accelerate launch --multi_gpu "
                           f"--num_processes {world}` or torchrun")
    if stage.fsdp:                                  # the Trainer shards with FSDP2 itself (train/sharding.py)
        check_fsdp(stage, acc.num_processes)
    return acc
