"""Checkpoints: atomic save, verified load, exact resume, retention.

A checkpoint is one folder, ``<root>/step_NNNNNNN/`` (``root`` is usually
``runs/<run>/<stage>/checkpoints``)::

    model.safetensors    model.state_dict()                    (safetensors, config in its metadata)
    ema.safetensors      EMA weights, when there is an EMA      (safetensors)
    optimizer.pt         optimizer.state_dict()                 (torch.save, loads with weights_only=True)
    scheduler.pt         scheduler.state_dict()                 (torch.save, loads with weights_only=True)
    state.pt             TrainingState: step, RNG, loader position, extra counters
    config.json          {"model": <MicroDiTConfig as a dict>, "stage": <stage config>}
    manifest.json        written last: format, step, final flag, sha256 and size of every file

It is built in a hidden ``<root>/.tmp-step_NNNNNNN-<pid>-<hex>/`` folder, every file is
fsync'ed, and only then is the folder renamed to ``step_NNNNNNN``. A process killed at any
instant therefore leaves either no new ``step_*`` folder or a complete one, and never touches
the older ones. Loading checks the checksums and that the saved model config equals the
current model's, naming every differing field. Example::

    from workbench.train.checkpoint import (TrainingState, apply_retention, capture_rng,
                                            latest_valid_checkpoint, load_checkpoint, restore_rng,
                                            save_checkpoint)

    state = TrainingState(step=1000, rng=capture_rng({"data": gen}), loader=loader.state_dict(),
                          extra={"stage": "stage1"})
    save_checkpoint("runs/demo/stage1/checkpoints", 1000, model=model, optimizer=opt,
                    scheduler=sched, ema=ema, state=state, stage_config=to_dict(stage))
    apply_retention("runs/demo/stage1/checkpoints", keep_last=3)

    # --resume auto
    path = latest_valid_checkpoint("runs/demo/stage1/checkpoints")   # skips corrupt ones, with a warning
    state = load_checkpoint(path, model=model, optimizer=opt, scheduler=sched, ema=ema)
    restore_rng(state.rng, {"data": gen}); loader.load_state_dict(state.loader)
"""

from .files import (CONFIG_FILE, EMA_FILE, FORMAT, MANIFEST, MODEL_FILE, OPTIMIZER_FILE, REQUIRED_FILES, SCHEDULER_FILE,
                    STATE_FILE, CheckpointError, apply_retention, is_final, latest_valid_checkpoint, list_checkpoints,
                    read_config, read_manifest, remove_stale_temps, resolve_checkpoint, verify_checkpoint)
from .load import (check_model_config, has_ema, load_checkpoint, load_model, load_model_weights, load_optimizer_state,
                   model_config, unwrap_model)
from .save import save_checkpoint
from .state import TrainingState, capture_rng, restore_rng

__all__ = ["CONFIG_FILE", "CheckpointError", "EMA_FILE", "FORMAT", "MANIFEST", "MODEL_FILE", "OPTIMIZER_FILE",
           "REQUIRED_FILES", "SCHEDULER_FILE", "STATE_FILE", "TrainingState", "apply_retention", "capture_rng",
           "check_model_config", "has_ema", "is_final", "latest_valid_checkpoint", "list_checkpoints",
           "load_checkpoint", "load_model", "load_model_weights", "load_optimizer_state", "model_config", "read_config",
           "read_manifest", "remove_stale_temps", "resolve_checkpoint", "restore_rng", "save_checkpoint",
           "unwrap_model", "verify_checkpoint"]
