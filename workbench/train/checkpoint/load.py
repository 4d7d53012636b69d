"""Reading a checkpoint back: verified weights, optimizer / scheduler / RNG state, config checks naming each field."""

from __future__ import annotations

import dataclasses
import json
import pickle
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file

from workbench.config import config_diff, format_diff, to_dict
from workbench.errors import InputError

from .files import (CONFIG_FILE, EMA_FILE, MODEL_FILE, OPTIMIZER_FILE, SCHEDULER_FILE, STATE_FILE, CheckpointError,
                    read_config, read_manifest, resolve_checkpoint, verify_checkpoint)
from .state import TrainingState


def safe_torch_load(file: Path, map_location="cpu"):
    """``torch.load(weights_only=True)``; a file holding other objects is refused with ``CheckpointError``."""
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"refused to unpickle {file}: it holds objects other than tensors (possibly "
                              f"malicious); it was not loaded") from None


def load_checkpoint(path: str | Path, *, model: torch.nn.Module, optimizer=None, scheduler=None, ema=None,
                    map_location: str | torch.device = "cpu", strict_config: bool = True, verify: bool = True,
                    ignore_fields: Iterable[str] = ()) -> TrainingState:
    """Load a checkpoint into ``model`` (and the optimizer, scheduler, EMA given) and return its TrainingState.

    Args:
        path: a checkpoint folder, or a stage/checkpoints folder (its newest valid checkpoint).
        model: receives ``model.safetensors`` (strict ``load_state_dict``).
        optimizer, scheduler, ema: receive their saved states when given; ``CheckpointError``
            when the checkpoint has none for one of them.
        map_location: device the tensors are read onto before being copied in.
        strict_config: raise ``ValueError`` naming each differing model-config field (else warn).
        verify: check sizes and sha256 of the files read first (``CheckpointError`` naming the file).
        ignore_fields: model-config fields allowed to differ (e.g. ``sample_size``, ``pos_interp_scale``
            on a resolution change: they do not change any weight's shape).

    Every file is read before anything is modified, so a failure leaves the objects untouched.
    """
    path = resolve_checkpoint(path)
    needed = [MODEL_FILE, STATE_FILE, CONFIG_FILE] + [name for name, obj in
              ((EMA_FILE, ema), (OPTIMIZER_FILE, optimizer), (SCHEDULER_FILE, scheduler)) if obj is not None]
    _check_files(path, needed, verify)
    model = unwrap_model(model)
    check_model_config(path, model, strict=strict_config, ignore_fields=ignore_fields)
    if torch.device(map_location).type == "cpu":
        map_location = "cpu"           # safetensors and torch.load refuse "cpu:0" (a gloo rank's device)
    device = str(map_location)
    weights = load_file(str(path / MODEL_FILE), device=device)
    ema_weights = load_file(str(path / EMA_FILE), device=device) if ema is not None else None
    loaded = {name: safe_torch_load(path / name, "cpu" if name == STATE_FILE else map_location)  # RNG stays on CPU
              for name in (STATE_FILE, OPTIMIZER_FILE, SCHEDULER_FILE) if name in needed}
    training_state = TrainingState.from_dict(loaded[STATE_FILE])
    model.load_state_dict(weights)
    if ema is not None:
        _load_ema(ema, ema_weights)
    if optimizer is not None:
        optimizer.load_state_dict(loaded[OPTIMIZER_FILE])
    if scheduler is not None:
        scheduler.load_state_dict(loaded[SCHEDULER_FILE])
    return training_state


def load_model_weights(path: str | Path, model: torch.nn.Module, *, ema: bool = False, verify: bool = True,
                       strict_config: bool = True, ignore_fields: Iterable[str] = ()) -> None:
    """Load only the model (or, with ``ema=True``, the EMA) weights of a checkpoint into ``model``.

    For ``init_from: weights`` and for sampling. ``path`` may be a stage folder (newest valid
    checkpoint). The config check and ``ignore_fields`` work as in :func:`load_checkpoint`.
    """
    path = resolve_checkpoint(path)
    name = EMA_FILE if ema else MODEL_FILE
    _check_files(path, [name, CONFIG_FILE], verify)
    model = unwrap_model(model)
    check_model_config(path, model, strict=strict_config, ignore_fields=ignore_fields)
    weights = load_file(str(path / name))
    model.load_state_dict(_strip_prefix(weights, model.state_dict().keys()) if ema else weights)


def load_optimizer_state(path: str | Path, optimizer: torch.optim.Optimizer, *,
                         map_location: str | torch.device = "cpu", verify: bool = True) -> None:
    """Load only the optimizer state of a checkpoint (``init_from`` with ``full`` carry-over).

    Groups are matched by their ``name`` when the two optimizers name different groups (a stage
    that adds or drops the REPA projector's group): shared groups carry their state, the others
    start fresh. Otherwise the groups must match in number and size (``ValueError`` from
    ``Optimizer.load_state_dict``); ``CheckpointError`` when none was saved.
    """
    path = resolve_checkpoint(path)
    _check_files(path, [OPTIMIZER_FILE], verify)
    saved = safe_torch_load(path / OPTIMIZER_FILE, map_location)
    ours = _group_layout(optimizer)

    def names(state_dict: dict) -> list:
        return [g.get("name") for g in state_dict["param_groups"]]

    if names(saved) != names(ours):
        saved = _match_groups_by_name(saved, ours)
    optimizer.load_state_dict(saved)


def _group_layout(optimizer) -> dict:
    """The optimizer's groups as its ``state_dict()`` has them (settings, consecutive parameter indices), read
    without building the state dict (a sharded model's would be a collective)."""
    groups, start = [], 0
    for group in optimizer.param_groups:
        n = len(group["params"])
        groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": list(range(start, start + n))})
        start += n
    return {"param_groups": groups}


def _match_groups_by_name(saved: dict, ours: dict) -> dict:
    """``saved`` optimizer state re-indexed onto ``ours``' groups by name (same-sized groups only)."""
    by_name = {g.get("name"): g for g in saved["param_groups"]}
    groups, state = [], {}
    for group in ours["param_groups"]:
        old = by_name.get(group.get("name"))
        if old is None or len(old["params"]) != len(group["params"]):
            groups.append(group)
            continue
        groups.append({**old, "params": group["params"]})
        for i, j in zip(old["params"], group["params"]):
            if i in saved["state"]:
                state[j] = saved["state"][i]
    return {"state": state, "param_groups": groups}


def has_ema(path: str | Path) -> bool:
    """Whether the checkpoint holds EMA weights (``ema.safetensors`` listed in its manifest)."""
    return EMA_FILE in read_manifest(resolve_checkpoint(path))["files"]


def load_model(path: str | Path, *, ema: bool | None = None, cls: type | None = None) -> torch.nn.Module:
    """The one way to build a model from a checkpoint: its saved config, its (EMA) weights; eval mode.

    ``path`` is a ``step_NNNNNNN`` folder or a stage folder (its newest checkpoint). ``ema``: None takes
    the EMA weights when the checkpoint has them, True requires them, False takes the raw weights.
    ``cls`` defaults to :class:`workbench.model.MicroDiT`::

        model = load_model("runs/demo/stage4")            # EMA weights when kept
    """
    path = resolve_checkpoint(path)
    config = read_config(path).get("model")
    if config is None:
        raise CheckpointError(f"checkpoint {path} has no model config in {CONFIG_FILE}; build the model yourself "
                              "and call load_model_weights")
    if cls is None:
        from workbench.model import MicroDiT as cls
    model = cls(**config)
    load_model_weights(path, model, ema=has_ema(path) if ema is None else ema)
    return model.eval()


def check_model_config(path: str | Path, model: torch.nn.Module, *, strict: bool = True,
                       ignore_fields: Iterable[str] = ()) -> None:
    """Raise ``ValueError`` naming each field where the checkpoint's model config differs from ``model``'s.

    Skipped when either side has no config (a plain ``nn.Module``). With ``strict=False`` the
    differences are only warned about.
    """
    saved, current = read_config(path).get("model"), model_config(unwrap_model(model))
    if saved is None or current is None:
        return
    ignored = set(ignore_fields)
    diff = {k: v for k, v in config_diff(saved, current).items() if k not in ignored}
    if not diff:
        return
    message = (f"checkpoint {path} was saved from a model with another config "
               f"({format_diff(diff, 'checkpoint', 'model')}). Build the model "
               f"from the checkpoint's config (workbench.train.checkpoint.load_model({str(path)!r})), "
               f"or pass ignore_fields=[...] for fields that do not "
               f"change the weights (e.g. sample_size, pos_interp_scale)")
    if strict:
        raise InputError(message)
    warnings.warn(message, stacklevel=2)


def _check_files(path: Path, names: list[str], verify: bool) -> None:
    """Raise ``CheckpointError`` naming the checkpoint and each missing or corrupt file among ``names``."""
    manifest = read_manifest(path)
    missing = [n for n in names if n not in manifest["files"]]
    if missing:
        raise CheckpointError(f"checkpoint {path} has no {', '.join(missing)} (it holds: "
                              f"{', '.join(sorted(manifest['files']))}); pass None for the parts it was saved without")
    problems = verify_checkpoint(path, files=names, checksums=verify)
    if problems:
        raise CheckpointError(f"checkpoint {path} is invalid: {'; '.join(problems)}. "
                              "Use an older checkpoint (latest_valid_checkpoint skips invalid ones)")


def _load_ema(ema, weights: dict[str, torch.Tensor]) -> None:
    """Copy saved EMA weights into an ``nn.Module``, a mapping of tensors, or an object with ``load_state_dict``."""
    if isinstance(ema, torch.nn.Module):
        ema = unwrap_model(ema)
        ema.load_state_dict(_strip_prefix(weights, ema.state_dict().keys()))
    elif isinstance(ema, Mapping):
        if set(ema) != set(weights):
            raise CheckpointError(f"EMA keys differ: missing {sorted(set(ema) - set(weights))[:5]}, "
                                  f"unexpected {sorted(set(weights) - set(ema))[:5]}")
        with torch.no_grad():
            for name, tensor in ema.items():
                tensor.copy_(weights[name])
    else:
        ema.load_state_dict(weights)


def _strip_prefix(weights: dict[str, torch.Tensor], wanted: Iterable[str], prefix: str = "module.") -> dict:
    """Drop a ``module.`` prefix (``AveragedModel`` EMA) when that makes the keys match ``wanted``."""
    wanted = set(wanted)
    if set(weights) == wanted:
        return weights
    stripped = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    return stripped if set(stripped) == wanted else weights


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module under DDP / DataParallel / ``torch.compile`` wrappers (FSDP is not gathered here)."""
    while True:
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod
        else:
            return model


def model_config(model: torch.nn.Module) -> dict | None:
    """The model's config as a plain dict: ``to_dict(model.arch)``, else a diffusers ``config``, else None."""
    arch = getattr(model, "arch", None)
    if dataclasses.is_dataclass(arch):
        return to_dict(arch)
    config = getattr(model, "config", None)
    if isinstance(config, Mapping):
        return json.loads(json.dumps({k: v for k, v in config.items() if not k.startswith("_")}, default=str))
    return None
