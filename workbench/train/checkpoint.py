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

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import secrets
import shutil
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from workbench.config import RETIRED_MODEL_FIELDS, config_diff, format_diff, to_dict

FORMAT = 1                                       # manifest format version
MANIFEST = "manifest.json"
MODEL_FILE, EMA_FILE = "model.safetensors", "ema.safetensors"
OPTIMIZER_FILE, SCHEDULER_FILE = "optimizer.pt", "scheduler.pt"
STATE_FILE, CONFIG_FILE = "state.pt", "config.json"
REQUIRED_FILES = (MODEL_FILE, STATE_FILE, CONFIG_FILE)

_STEP_DIR = re.compile(r"^step_(\d+)$")
_TEMP_DIR = re.compile(r"^\.tmp-(?:old-|del-)?step_\d+-(\d+)-[0-9a-f]+$")
_IN_FLIGHT: set[str] = set()                     # names of the temp dirs this process is writing now
_IN_FLIGHT_LOCK = threading.Lock()


class CheckpointError(ValueError):
    """A checkpoint is partial, corrupt, or lacks a part the caller asked to load."""


# --------------------------------------------------------------------------------------------
#  Training state and RNG
# --------------------------------------------------------------------------------------------

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
    def from_dict(cls, values: Mapping) -> "TrainingState":
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
                      "only the first min(both) devices are restored")
    for device, device_state in enumerate(cuda_states[:count]):
        torch.cuda.set_rng_state(device_state.cpu(), device)


# --------------------------------------------------------------------------------------------
#  Saving
# --------------------------------------------------------------------------------------------

def save_checkpoint(root: str | Path, step: int, *, model: torch.nn.Module, optimizer=None, scheduler=None,
                    ema=None, state: TrainingState, stage_config: Mapping | None = None,
                    sampling: Mapping | None = None, final: bool = False) -> Path:
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
            ``train.sampling.sampling_record``), so the checkpoint samples without its training data.
        final: mark the stage's final checkpoint; retention never deletes it.

    Re-saving an existing step replaces that folder (old one renamed aside, new one renamed in,
    old one deleted). Raises ``TypeError`` before writing anything when ``state``, the optimizer
    or scheduler state holds values ``torch.load(weights_only=True)`` cannot read back.
    """
    root, step = Path(root), int(step)
    model = unwrap_model(model)
    arch = model_config(model)
    config = {"model": arch, "stage": stage_config, **({"sampling": sampling} if sampling else {})}
    config_text = json.dumps(config, indent=2, default=_json_default)
    parts = {STATE_FILE: state.to_dict()}
    if optimizer is not None:
        parts[OPTIMIZER_FILE] = optimizer.state_dict()
    if scheduler is not None:
        parts[SCHEDULER_FILE] = scheduler.state_dict()
    for name, obj in parts.items():
        _check_weights_only_loadable(obj, name)

    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-step_{step:07d}-{os.getpid()}-{secrets.token_hex(4)}"
    with _in_flight(tmp):
        tmp.mkdir()
        metadata = {"format": "pt", "step": str(step), "model_config": json.dumps(arch)}
        _write_safetensors(tmp / MODEL_FILE, model.state_dict(), metadata)
        if ema is not None:
            _write_safetensors(tmp / EMA_FILE, _ema_state_dict(ema), metadata)
        for name, obj in parts.items():
            _write_file(tmp / name, lambda f, obj=obj: torch.save(obj, f))
        _write_file(tmp / CONFIG_FILE, lambda f: f.write(config_text.encode()))
        _write_manifest(tmp, step, final)
        _fsync_dir(tmp)
        return _publish(tmp, root / f"step_{step:07d}")


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


def _write_file(path: Path, write: Callable) -> None:
    """Create ``path``, let ``write(f)`` fill it, then flush and fsync it."""
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


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


# --------------------------------------------------------------------------------------------
#  Verifying and finding checkpoints
# --------------------------------------------------------------------------------------------

def verify_checkpoint(path: str | Path, *, checksums: bool = True, files: Iterable[str] | None = None) -> list[str]:
    """Problems with the checkpoint at ``path``; ``[]`` when it is complete and intact.

    Checks the manifest (present, readable JSON, known format, matching step), that every
    required file is listed, and the size and sha256 of each listed file (or only ``files``).
    ``checksums=False`` skips the hashing (a quick structural check).
    """
    path = Path(path)
    manifest, problems = _read_manifest_checked(path)
    if manifest is None:
        return problems
    listed = manifest["files"]
    problems += [f"{name}: required but not in {MANIFEST}" for name in REQUIRED_FILES if name not in listed]
    wanted = listed if files is None else [name for name in files if name in listed]
    for name in wanted:
        problems += _file_problems(path / name, listed[name], checksums)
    if CONFIG_FILE in wanted and not problems:
        try:
            json.loads((path / CONFIG_FILE).read_text())
        except (OSError, ValueError) as err:
            problems.append(f"{CONFIG_FILE}: unreadable JSON ({err})")
    return problems


def _read_manifest_checked(path: Path) -> tuple[dict | None, list[str]]:
    """The parsed manifest and ``[]``, or ``None`` and the problems that prevent reading it."""
    if not path.is_dir():
        return None, [f"{path} is not a directory"]
    if not (path / MANIFEST).is_file():
        return None, [f"missing {MANIFEST} (incomplete checkpoint: the save was interrupted or files were removed)"]
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as err:
        return None, [f"{MANIFEST}: unreadable JSON ({err})"]
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return None, [f"{MANIFEST}: has no 'files' mapping"]
    if manifest.get("format") != FORMAT:
        return None, [f"{MANIFEST}: unknown format {manifest.get('format')!r} (this version reads {FORMAT})"]
    match = _STEP_DIR.match(path.name)
    if match and int(match.group(1)) != manifest.get("step"):
        return None, [f"{MANIFEST}: step {manifest.get('step')!r} does not match the folder name {path.name}"]
    return manifest, []


def _file_problems(file: Path, expected: Mapping, checksums: bool) -> list[str]:
    """Size and checksum problems of one listed file."""
    if not file.is_file():
        return [f"{file.name}: missing"]
    size = file.stat().st_size
    if size != expected.get("bytes"):
        return [f"{file.name}: size {size} bytes, manifest says {expected.get('bytes')}"]
    if checksums and _sha256(file) != expected.get("sha256"):
        return [f"{file.name}: sha256 checksum mismatch (file is corrupt)"]
    return []


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def list_checkpoints(root: str | Path) -> list[Path]:
    """The ``step_*`` folders under ``root``, oldest step first (``.tmp-*`` folders are ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_valid_checkpoint(root: str | Path, log: Callable[[str], Any] = warnings.warn) -> Path | None:
    """The newest checkpoint under ``root`` that verifies, or ``None``.

    Each newer partial or corrupt checkpoint is skipped and reported through ``log`` with its
    path and problems.
    """
    for path in reversed(list_checkpoints(root)):
        problems = verify_checkpoint(path)
        if not problems:
            return path
        log(f"skipping invalid checkpoint {path}: {'; '.join(problems)}")
    return None


def resolve_checkpoint(spec: str | Path) -> Path:
    """A checkpoint folder from ``spec``: the folder itself, or the newest valid one under a stage folder.

    Accepts ``.../step_NNNNNNN`` (returned as is; loading verifies it), a checkpoints root
    (``runs/x/stage1/checkpoints``) or a stage folder (``runs/x/stage1``). Raises
    ``FileNotFoundError`` saying what was looked for.
    """
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: the path does not exist")
    if _STEP_DIR.match(path.name) or (path / MANIFEST).is_file():
        return path
    for root in (path / "checkpoints", path):
        candidates = list_checkpoints(root)
        if candidates:
            found = latest_valid_checkpoint(root)
            if found is None:
                raise FileNotFoundError(f"no valid checkpoint under {root}: all {len(candidates)} are partial "
                                        "or corrupt (see the warnings)")
            return found
    stages = sorted(p.name for p in path.iterdir() if (p / "checkpoints").is_dir()) if path.is_dir() else []
    if stages:
        raise FileNotFoundError(f"{path} is a run with stages {', '.join(stages)}: name one, "
                                f"e.g. {path / stages[-1]}")
    raise FileNotFoundError(f"no checkpoints under {path}: expected a step_NNNNNNN folder, a checkpoints folder "
                            "holding them, or a stage folder with a checkpoints/ subfolder")


def read_manifest(path: str | Path) -> dict:
    """The parsed ``manifest.json`` of a checkpoint (``CheckpointError`` when it cannot be read)."""
    manifest, problems = _read_manifest_checked(Path(path))
    if manifest is None:
        raise CheckpointError(f"checkpoint {path}: {'; '.join(problems)}")
    return manifest


def read_config(path: str | Path) -> dict:
    """The ``config.json`` of a checkpoint: ``{"model": {...}, "stage": {...} or None, "sampling": {...}}``.

    Fields older versions kept in the model config that are not architecture (``RETIRED_MODEL_FIELDS``)
    are left out of ``"model"``.
    """
    config = json.loads((Path(path) / CONFIG_FILE).read_text())
    if isinstance(config.get("model"), dict):
        config["model"] = {k: v for k, v in config["model"].items() if k not in RETIRED_MODEL_FIELDS}
    return config


def is_final(path: str | Path) -> bool:
    """Whether the checkpoint's manifest marks it as a stage's final checkpoint."""
    try:
        return bool(read_manifest(path).get("final"))
    except CheckpointError:
        return False


# --------------------------------------------------------------------------------------------
#  Loading
# --------------------------------------------------------------------------------------------

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
    device = str(map_location)
    weights = load_file(str(path / MODEL_FILE), device=device)
    ema_weights = load_file(str(path / EMA_FILE), device=device) if ema is not None else None
    loaded = {name: torch.load(path / name, map_location="cpu" if name == STATE_FILE else map_location,
                               weights_only=True)      # RNG states must stay CPU byte tensors
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
    saved = torch.load(path / OPTIMIZER_FILE, map_location=map_location, weights_only=True)
    ours = optimizer.state_dict()
    names = lambda sd: [g.get("name") for g in sd["param_groups"]]  # noqa: E731
    if names(saved) != names(ours):
        saved = _match_groups_by_name(saved, ours)
    optimizer.load_state_dict(saved)


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


def load_model(path: str | Path, *, ema: bool = False, cls: type | None = None) -> torch.nn.Module:
    """Build a model from a checkpoint's saved config and load its (EMA) weights; eval mode.

    ``cls`` defaults to :class:`workbench.model.MicroDiT`.
    """
    path = resolve_checkpoint(path)
    config = read_config(path).get("model")
    if config is None:
        raise CheckpointError(f"checkpoint {path} has no model config in {CONFIG_FILE}; build the model yourself "
                              "and call load_model_weights")
    if cls is None:
        from workbench.model import MicroDiT as cls
    model = cls(**config)
    load_model_weights(path, model, ema=ema)
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
               f"from the checkpoint's config (workbench.train.checkpoint.load_model({str(path)!r}), or "
               f"MicroDiT(**read_config(path)['model'])), or pass ignore_fields=[...] for fields that do not "
               f"change the weights (e.g. sample_size, pos_interp_scale)")
    if strict:
        raise ValueError(message)
    warnings.warn(message)


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


# --------------------------------------------------------------------------------------------
#  Retention
# --------------------------------------------------------------------------------------------

def apply_retention(root: str | Path, keep_last: int | None, log: Callable[[str], Any] = warnings.warn) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete checkpoints, keeping every final one.

    Also removes leftover ``.tmp-*`` folders of dead processes (and of this process, except the
    ones it is writing right now), and ``step_*`` folders that are incomplete (no manifest);
    those are reported through ``log``. ``keep_last=None`` keeps every checkpoint. Each folder is
    renamed aside before it is deleted, so an interrupted deletion never leaves a half-deleted
    ``step_*``. Returns the deleted paths (as they were named).
    """
    if keep_last is not None and (not isinstance(keep_last, int) or keep_last < 1):
        raise ValueError(f"keep_last: expected an integer >= 1 or None (keep all), got {keep_last!r}")
    root = Path(root)
    deleted = _remove_stale_temps(root)
    if keep_last is None:
        return deleted
    checkpoints = list_checkpoints(root)
    complete = [p for p in checkpoints if not verify_checkpoint(p, checksums=False)]
    keep = set(complete[-keep_last:]) | {p for p in complete if is_final(p)}
    for path in checkpoints:
        if path not in keep:
            if path not in complete:
                log(f"removing incomplete checkpoint {path}: {'; '.join(verify_checkpoint(path, checksums=False))}")
            _remove_dir(path)
            deleted.append(path)
    return deleted


def _remove_stale_temps(root: Path) -> list[Path]:
    """Remove ``.tmp-*`` folders whose writer is gone (dead pid, or this pid but not in flight)."""
    if not root.is_dir():
        return []
    removed = []
    for path in sorted(root.iterdir()):
        match = _TEMP_DIR.match(path.name)
        if not match or not path.is_dir():
            continue
        pid = int(match.group(1))
        with _IN_FLIGHT_LOCK:
            busy = path.name in _IN_FLIGHT
        if busy or (pid != os.getpid() and _pid_alive(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _remove_dir(path: Path) -> None:
    """Rename ``path`` to a hidden temp name, then delete it."""
    aside = path.parent / f".tmp-del-{path.name}-{os.getpid()}-{secrets.token_hex(4)}"
    os.rename(path, aside)
    shutil.rmtree(aside, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def _in_flight(path: Path):
    """Register a temp folder as being written by this process, so retention leaves it alone."""
    with _IN_FLIGHT_LOCK:
        _IN_FLIGHT.add(path.name)
    try:
        yield
    finally:
        with _IN_FLIGHT_LOCK:
            _IN_FLIGHT.discard(path.name)


def _fsync_dir(path: Path) -> None:
    """fsync a directory so renames and new entries in it are durable (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
