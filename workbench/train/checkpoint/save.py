"""Writing a checkpoint: built in a temp folder, every file fsync'ed, the manifest last, then one rename."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from workbench.config import MODEL_CONFIG_VERSION, to_dict
from workbench.errors import free_bytes, free_inodes, has_room, no_space, write_failure

from .files import (CONFIG_FILE, EMA_FILE, FORMAT, MANIFEST, MODEL_FILE, OPTIMIZER_FILE, SCHEDULER_FILE, STATE_FILE,
                    _fsync_dir, _in_flight, _sha256, _write_file)
from .load import model_config, unwrap_model
from .state import TrainingState


def save_checkpoint(root: str | Path, step: int, *, model: torch.nn.Module, optimizer=None, scheduler=None,
                    ema=None, state: TrainingState, stage_config: Mapping | None = None,
                    sampling: Mapping | None = None, final: bool = False, keep_last: int | None = None) -> Path:
    """Write ``root/step_{step:07d}/`` atomically and return its path.

    Args:
        root: the checkpoints folder, e.g. ``runs/<run>/<stage>/checkpoints`` (created if missing).
        step: optimiser steps completed; names the folder.
        model: the model (DDP / ``torch.compile`` wrappers are unwrapped); its ``arch`` or diffusers
            ``config`` is stored in ``config.json`` and checked on load.
        optimizer, scheduler: saved with ``torch.save(x.state_dict())`` when given.
        ema: an ``nn.Module`` or a ``{name: tensor}`` state dict of EMA weights, when given.
        state: the :class:`TrainingState` (step, RNG, loader position, counters).
        stage_config: a JSON-able dict of the stage config (paths and dataclasses are converted).
        sampling: what sampling needs (codec, text encoder, σ_data, resolution, prompts; see
            ``train.inference.sampling_record``), so the checkpoint samples without its training data.
        final: mark the stage's final checkpoint; retention never deletes it.
        keep_last: the retention this checkpoint is written under, for the advice of a full-disk error.

    Re-saving an existing step replaces that folder (old one renamed aside, new one renamed in,
    old one deleted). Raises ``TypeError`` before writing anything when ``state``, the optimizer
    or scheduler state holds values ``torch.load(weights_only=True)`` cannot read back.
    """
    root, step = Path(root), int(step)
    model = unwrap_model(model)
    arch = model_config(model)
    config = {"model": arch, "model_config_version": MODEL_CONFIG_VERSION, "stage": stage_config,
              **({"sampling": sampling} if sampling else {})}
    config_text = json.dumps(config, indent=2, default=_json_default)
    parts = {STATE_FILE: state.to_dict()}
    if optimizer is not None:
        parts[OPTIMIZER_FILE] = optimizer.state_dict()
    if scheduler is not None:
        parts[SCHEDULER_FILE] = scheduler.state_dict()
    for name, obj in parts.items():
        _check_weights_only_loadable(obj, name)

    what = f"checkpoint step_{step:07d}"
    weights, ema_weights = model.state_dict(), (_ema_state_dict(ema) if ema is not None else None)
    needed = _tensor_bytes([weights, ema_weights, parts])
    free = free_bytes(root)
    if not has_room(free, needed) or free_inodes(root) == 0:                                # before writing anything
        raise no_space(what, root, needed, free, keep_last=keep_last)
    tmp = root / f".tmp-step_{step:07d}-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        with _in_flight(tmp):
            tmp.mkdir()
            metadata = {"format": "pt", "step": str(step), "model_config": json.dumps(arch)}
            _write_safetensors(tmp / MODEL_FILE, weights, metadata)
            if ema_weights is not None:
                _write_safetensors(tmp / EMA_FILE, ema_weights, metadata)
            for name, obj in parts.items():
                _write_file(tmp / name, lambda f, obj=obj: torch.save(obj, f))
            _write_file(tmp / CONFIG_FILE, lambda f: f.write(config_text.encode()))
            _write_manifest(tmp, step, final)
            _fsync_dir(tmp)
            return _publish(tmp, root / f"step_{step:07d}")
    except BaseException as err:         # nothing half-written stays behind; earlier checkpoints are untouched
        shutil.rmtree(tmp, ignore_errors=True)
        friendly = write_failure(err, what, root, needed, keep_last=keep_last)
        if friendly is None:
            raise
        raise friendly from err              # the CLI prints one line; --debug shows the OSError too


def _tensor_bytes(obj) -> int:
    """Bytes of every tensor in nested dicts / lists: what a checkpoint of ``obj`` will take on disk, roughly."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _write_manifest(folder: Path, step: int, final: bool) -> None:
    """Write ``manifest.json`` listing the sha256 and size of every file already in ``folder``."""
    files = {p.name: {"sha256": _sha256(p), "bytes": p.stat().st_size}
             for p in sorted(folder.iterdir()) if p.name != MANIFEST}
    manifest = {"format": FORMAT, "step": step, "final": bool(final), "files": files,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__}
    _write_file(folder / MANIFEST, lambda f: f.write(json.dumps(manifest, indent=2).encode()))


def _publish(tmp: Path, final_path: Path) -> Path:
    """Rename the finished temp folder to its final name, replacing an existing one safely."""
    old = None
    if final_path.exists():
        old = final_path.parent / f".tmp-old-{final_path.name}-{os.getpid()}-{secrets.token_hex(4)}"
        os.rename(final_path, old)
    try:
        os.rename(tmp, final_path)
    except BaseException:
        if old is not None:                     # put the previous copy back (a SIGKILL here loses this step)
            os.rename(old, final_path)
        raise
    _fsync_dir(final_path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final_path


def _write_safetensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """``save_file`` a state dict (contiguous CPU copies, shared storage de-duplicated), then fsync."""
    save_file(_plain_tensors(tensors), str(path), metadata=metadata)
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _plain_tensors(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors; a tensor sharing storage with an earlier one is cloned."""
    out, seen = {}, set()
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state dict entry {name!r} is a {type(tensor).__name__}; safetensors stores tensors only")
        tensor = tensor.detach().cpu()
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen or tensor.numel() == 0:
            tensor = tensor.clone()
        seen.add(ptr)
        out[name] = tensor.contiguous()
    return out


def _ema_state_dict(ema) -> Mapping[str, torch.Tensor]:
    """EMA weights as a state dict: from an ``nn.Module``, a mapping, or an object with ``state_dict()``."""
    if isinstance(ema, torch.nn.Module):
        return unwrap_model(ema).state_dict()
    if isinstance(ema, Mapping):
        return ema
    return ema.state_dict()


def _check_weights_only_loadable(obj: Any, where: str) -> None:
    """Raise ``TypeError`` naming the first value ``torch.load(weights_only=True)`` could not read back."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            _check_weights_only_loadable(key, f"{where} key {key!r}")
            _check_weights_only_loadable(value, f"{where}[{key!r}]")
    elif isinstance(obj, (list, tuple)) and type(obj) in (list, tuple):
        for i, value in enumerate(obj):
            _check_weights_only_loadable(value, f"{where}[{i}]")
    elif not (type(obj) in (str, int, float, bool, type(None), complex)
              or isinstance(obj, (torch.Tensor, torch.Size, torch.dtype, torch.device))):
        raise TypeError(f"cannot checkpoint {where}: a {type(obj).__module__}.{type(obj).__name__} cannot be "
                        "read back by torch.load(weights_only=True); store plain int/float/str/bool/list/dict or "
                        "tensors (e.g. int(x) for numpy scalars)")


def _json_default(value: Any) -> Any:
    """JSON fallback for stage configs: paths, dataclasses, numpy scalars."""
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"stage_config holds a {type(value).__name__} ({value!r}) that cannot be written to JSON")
