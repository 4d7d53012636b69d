"""Checkpoints: exact round trips, config checks, corruption and crash safety, retention, resolution."""

import copy
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest
import torch

from tests.conftest import randomize_zero_params
from workbench.model import MicroDiT
from workbench.train import checkpoint as ckpt
from workbench.train.checkpoint import (CheckpointError, TrainingState, apply_retention, capture_rng,
                                        latest_valid_checkpoint, list_checkpoints, load_checkpoint, load_model,
                                        load_model_weights, read_manifest, resolve_checkpoint, restore_rng,
                                        save_checkpoint, verify_checkpoint)

# --------------------------------------------------------------------------- helpers


def tiny(seed: int = 0) -> torch.nn.Module:
    """A config-less two-layer net: fast, for tests that do not need the model config check."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))


def nano(seed: int = 0, **overrides) -> MicroDiT:
    torch.manual_seed(seed)
    small = {"depth": 2, "width": 64, "mixer_width": 64, **overrides}
    return randomize_zero_params(MicroDiT.from_preset("nano", **small), seed=seed)


def save_tiny(root, step, model=None, final=False, **kwargs):
    model = model if model is not None else tiny(step)
    return save_checkpoint(root, step, model=model, state=TrainingState(step=step), final=final, **kwargs)


def flip_byte(path, offset: int = -10) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def collect_warnings():
    messages = []
    return messages, messages.append


# --------------------------------------------------------------------------- round trip

def make_training(seed: int):
    """A nano MicroDiT with AdamW, warm-up LambdaLR, an EMA copy and a named data generator."""
    model = nano(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 4))
    ema = copy.deepcopy(model).requires_grad_(False)
    return model, optimizer, scheduler, ema, torch.Generator().manual_seed(seed)


def train_step(model, optimizer, scheduler, ema, gen) -> float:
    """One step whose data come from the named generator and whose noise comes from every global RNG."""
    x = torch.randn(2, 3, 8, 8, generator=gen)
    caption = torch.randn(2, 4, 384, generator=gen)
    noise = torch.randn(2, 3, 8, 8) * (1 + random.random()) * (1 + float(np.random.rand()))
    out = model(x + noise, torch.zeros(2), caption, mask_ratio=0.5, generator=gen).sample
    loss = (out - x).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 0.1)
    return loss.item()


def test_save_load_round_trip_resumes_bit_identically(tmp_path):
    model, optimizer, scheduler, ema, gen = make_training(seed=0)
    for _ in range(2):
        train_step(model, optimizer, scheduler, ema, gen)
    state = TrainingState(step=2, rng=capture_rng({"data": gen}), loader={"epoch": 1, "position": 7},
                          extra={"stage": "stage1", "nonfinite_steps": 0, "samples_seen": 6})
    path = save_checkpoint(tmp_path, 2, model=model, optimizer=optimizer, scheduler=scheduler, ema=ema,
                           state=state, stage_config={"name": "stage1", "data": tmp_path})
    expected_losses = [train_step(model, optimizer, scheduler, ema, gen) for _ in range(2)]

    # fresh objects with other weights and other RNG states
    model2, optimizer2, scheduler2, ema2, gen2 = make_training(seed=1)
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    loaded = load_checkpoint(path, model=model2, optimizer=optimizer2, scheduler=scheduler2, ema=ema2)
    restore_rng(loaded.rng, {"data": gen2})
    assert (loaded.step, loaded.loader, loaded.extra) == (2, state.loader, state.extra)
    assert scheduler2.last_epoch == 2
    assert [train_step(model2, optimizer2, scheduler2, ema2, gen2) for _ in range(2)] == expected_losses
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(ema.state_dict().values(), ema2.state_dict().values()):
        assert torch.equal(a, b)
    assert scheduler2.state_dict()["last_epoch"] == scheduler.state_dict()["last_epoch"] == 4
    assert ckpt.read_config(path)["stage"] == {"name": "stage1", "data": str(tmp_path)}


def test_ema_differs_from_model_and_loads_as_model_weights(tmp_path):
    model, ema = tiny(0), tiny(1)
    path = save_checkpoint(tmp_path, 1, model=model, ema=ema.state_dict(), state=TrainingState(step=1))
    target = tiny(2)
    load_model_weights(path, target, ema=True)
    assert all(torch.equal(a, b) for a, b in zip(target.parameters(), ema.parameters()))
    load_model_weights(path, target)
    assert all(torch.equal(a, b) for a, b in zip(target.parameters(), model.parameters()))


def test_optimizer_state_and_ema_presence_can_be_read_alone(tmp_path):
    model = tiny()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    with_ema = save_tiny(tmp_path / "a", 1, model=model, ema=tiny(1), optimizer=optimizer)
    without = save_tiny(tmp_path / "b", 1)
    assert ckpt.has_ema(with_ema) and not ckpt.has_ema(without)
    fresh = torch.optim.AdamW(tiny().parameters(), lr=1e-3)
    ckpt.load_optimizer_state(tmp_path / "a", fresh)
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    with pytest.raises(CheckpointError, match="has no optimizer.pt"):
        ckpt.load_optimizer_state(without, fresh)


def test_load_model_builds_the_saved_config(tmp_path):
    model = nano(0, width=96)
    path = save_checkpoint(tmp_path, 1, model=model, state=TrainingState(step=1))
    rebuilt = load_model(tmp_path)
    assert rebuilt.arch == model.arch
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.parameters(), model.parameters()))
    assert read_manifest(path)["step"] == 1


def test_capture_rng_survives_weights_only_load_and_repeats_numbers(tmp_path):
    gen = torch.Generator().manual_seed(3)
    torch.save(capture_rng({"data": gen}), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=gen).item(),
                random.gauss(0, 1))
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True), {"data": gen})
    assert (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=gen).item(),
            random.gauss(0, 1)) == expected


def test_restore_rng_names_a_missing_generator():
    with pytest.raises(KeyError, match="'data'"):
        restore_rng(capture_rng(), {"data": torch.Generator()})


# --------------------------------------------------------------------------- config checks

def test_loading_into_another_config_names_each_differing_field(tmp_path):
    path = save_checkpoint(tmp_path, 1, model=nano(0), state=TrainingState(step=1))
    other = nano(0, depth=3, mixer_depth=0)
    with pytest.raises(ValueError, match=r"depth: checkpoint 2 vs model 3.*mixer_depth: checkpoint 1 vs model 0"):
        load_checkpoint(path, model=other)
    with pytest.raises(ValueError, match=r"depth: checkpoint 2 vs model 3.*load_model"):
        load_model_weights(path, other)


def test_fields_that_keep_weight_shapes_can_be_ignored(tmp_path):
    model = nano(0)
    path = save_checkpoint(tmp_path, 1, model=model, state=TrainingState(step=1))
    bigger = nano(1, sample_size=64, pos_interp_scale=2.0)
    with pytest.raises(ValueError, match="sample_size: checkpoint 32 vs model 64"):
        load_model_weights(path, bigger)
    load_model_weights(path, bigger, ignore_fields=("sample_size", "pos_interp_scale"))
    assert all(torch.equal(a, b) for a, b in zip(bigger.parameters(), model.parameters()))


def test_loading_a_part_the_checkpoint_lacks_is_a_clear_error(tmp_path):
    path = save_tiny(tmp_path, 1)
    with pytest.raises(CheckpointError, match="has no ema.safetensors, optimizer.pt"):
        load_checkpoint(path, model=tiny(), ema=tiny(), optimizer=torch.optim.SGD(tiny().parameters(), lr=1))


def test_save_rejects_state_that_weights_only_load_cannot_read(tmp_path):
    state = TrainingState(step=1, extra={"samples_seen": np.int64(3)})
    with pytest.raises(TypeError, match=r"state.pt\['extra'\]\['samples_seen'\].*numpy"):
        save_checkpoint(tmp_path, 1, model=tiny(), state=state)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- manifest, corruption, crashes

def test_manifest_lists_every_file_with_checksum_and_final_flag(tmp_path):
    model = tiny()
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    path = save_tiny(tmp_path, 12, model=model, final=True, ema=tiny(1), optimizer=optimizer, scheduler=scheduler)
    manifest = read_manifest(path)
    assert path.name == "step_0000012"
    assert (manifest["format"], manifest["step"], manifest["final"]) == (1, 12, True)
    assert sorted(manifest["files"]) == sorted(["model.safetensors", "ema.safetensors", "optimizer.pt",
                                                "scheduler.pt", "state.pt", "config.json"])
    assert manifest["files"]["state.pt"]["bytes"] == (path / "state.pt").stat().st_size
    assert verify_checkpoint(path) == []


def test_corrupt_file_is_reported_and_skipped_for_the_previous_checkpoint(tmp_path):
    good = save_tiny(tmp_path, 1)
    bad = save_tiny(tmp_path, 2)
    flip_byte(bad / "model.safetensors")
    assert verify_checkpoint(bad) == ["model.safetensors: sha256 checksum mismatch (file is corrupt)"]
    messages, log = collect_warnings()
    assert latest_valid_checkpoint(tmp_path, log=log) == good
    assert len(messages) == 1 and "step_0000002" in messages[0] and "model.safetensors" in messages[0]
    with pytest.raises(CheckpointError, match=r"step_0000002.*model.safetensors: sha256"):
        load_checkpoint(bad, model=tiny())


def test_latest_valid_checkpoint_warns_by_default(tmp_path):
    save_tiny(tmp_path, 1)
    (tmp_path / "step_0000002").mkdir()
    with pytest.warns(UserWarning, match=r"step_0000002.*missing manifest.json"):
        assert latest_valid_checkpoint(tmp_path).name == "step_0000001"


@pytest.mark.parametrize("damage, problem", [
    (lambda p: (p / "manifest.json").unlink(), "missing manifest.json"),
    (lambda p: (p / "state.pt").unlink(), "state.pt: missing"),
    (lambda p: (p / "config.json").write_text("{}"), "config.json: size"),
    (lambda p: (p / "manifest.json").write_text("{not json"), "manifest.json: unreadable JSON"),
])
def test_verify_names_the_damaged_file(tmp_path, damage, problem):
    path = save_tiny(tmp_path, 1)
    damage(path)
    problems = verify_checkpoint(path)
    assert len(problems) == 1 and problems[0].startswith(problem)


def test_partial_and_temp_dirs_are_ignored(tmp_path):
    good = save_tiny(tmp_path, 1)
    partial = tmp_path / "step_0000003"                      # a crash of a non-atomic writer: no manifest
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    os.rename(save_tiny(tmp_path, 4), tmp_path / ".tmp-step_0000004-1-abcd")
    assert list_checkpoints(tmp_path) == [good, partial]
    messages, log = collect_warnings()
    assert latest_valid_checkpoint(tmp_path, log=log) == good
    assert len(messages) == 1 and "step_0000003" in messages[0] and "manifest" in messages[0]


def test_a_save_that_dies_before_the_manifest_leaves_no_checkpoint(tmp_path, monkeypatch):
    old = save_tiny(tmp_path, 1)
    before = (old / "model.safetensors").read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed")
    monkeypatch.setattr(ckpt.save, "_write_manifest", crash)
    with pytest.raises(KeyboardInterrupt):
        save_tiny(tmp_path, 2)
    with pytest.raises(KeyboardInterrupt):
        save_tiny(tmp_path, 1, model=tiny(9))              # re-saving an existing step
    assert list_checkpoints(tmp_path) == [old] and verify_checkpoint(old) == []
    assert (old / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["step_0000001"]    # the failed writes cleaned up after themselves


def test_resaving_a_step_replaces_it(tmp_path):
    save_tiny(tmp_path, 5, model=tiny(0))
    path = save_tiny(tmp_path, 5, model=tiny(1))
    target = tiny(2)
    load_checkpoint(path, model=target)
    assert all(torch.equal(a, b) for a, b in zip(target.parameters(), tiny(1).parameters()))
    assert [p.name for p in tmp_path.iterdir()] == ["step_0000005"]


def test_a_failed_replace_puts_the_previous_copy_back(tmp_path, monkeypatch):
    path = save_tiny(tmp_path, 5, model=tiny(0))
    real_rename, calls = os.rename, []

    def rename(src, dst):
        calls.append(src)
        if len(calls) == 2:                                    # old copy moved aside, new one not yet in
            raise OSError("disk full")
        real_rename(src, dst)
    monkeypatch.setattr(ckpt.save.os, "rename", rename)
    with pytest.raises(OSError, match="disk full"):
        save_tiny(tmp_path, 5, model=tiny(1))
    monkeypatch.undo()
    target = tiny(2)
    load_checkpoint(path, model=target)
    assert all(torch.equal(a, b) for a, b in zip(target.parameters(), tiny(0).parameters()))


KILL_WORKER = textwrap.dedent("""
    import sys, torch
    from workbench.train.checkpoint import TrainingState, capture_rng, save_checkpoint
    model = torch.nn.Sequential(*[torch.nn.Linear(512, 512) for _ in range(8)])    # 8 MB of weights
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 512)).sum().backward(); optimizer.step()                  # 16 MB of Adam state
    print("ready", flush=True)
    for i in range(10**6):
        step = i // 2 + 1                                          # each step saved twice: replace path
        with torch.no_grad():
            model[0].bias.fill_(i)
        save_checkpoint(sys.argv[1], step, model=model, optimizer=optimizer,
                        state=TrainingState(step=step, rng=capture_rng()))
""")


@pytest.mark.slow
def test_sigkill_during_save_never_leaves_an_invalid_checkpoint(tmp_path):
    script, root = tmp_path / "worker.py", tmp_path / "checkpoints"
    script.write_text(KILL_WORKER)
    rng, temps_seen = random.Random(0), 0
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, str(script), str(root)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.8))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        for path in list_checkpoints(root):
            assert verify_checkpoint(path) == [], path
        temps_seen += len(list(root.glob(".tmp-*")))
    assert temps_seen > 0, "no kill landed inside a save: the test did not exercise atomicity"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        latest = latest_valid_checkpoint(root)
    state = load_checkpoint(latest, model=torch.nn.Sequential(*[torch.nn.Linear(512, 512) for _ in range(8)]))
    assert latest.name == f"step_{state.step:07d}"
    apply_retention(root, keep_last=2)                                 # the dead writers' temp dirs go
    assert not list(root.glob(".tmp-*"))


# --------------------------------------------------------------------------- retention and resolution

def test_retention_keeps_the_last_n_and_every_final_checkpoint(tmp_path):
    for step in range(1, 7):
        save_tiny(tmp_path, step, final=step == 2)
    deleted = apply_retention(tmp_path, keep_last=2)
    assert [p.name for p in deleted] == ["step_0000001", "step_0000003", "step_0000004"]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000002", "step_0000005", "step_0000006"]
    assert apply_retention(tmp_path, keep_last=2) == []
    with pytest.raises(ValueError, match="keep_last"):
        apply_retention(tmp_path, keep_last=0)


def test_retention_never_deletes_a_damaged_final_checkpoint_it_moves_it_aside(tmp_path):
    for step in (10, 20, 30, 40):
        save_tiny(tmp_path, step, model=tiny(step), final=step == 40)
    weights = (tmp_path / "step_0000040" / "model.safetensors").read_bytes()
    os.truncate(tmp_path / "step_0000040" / "model.safetensors", 100)            # damaged, as a full disk leaves it
    (tmp_path / "step_0000010" / "manifest.json").unlink()                       # incomplete, but not a temp folder
    lines = []
    deleted = apply_retention(tmp_path, keep_last=1, log=lines.append)
    assert deleted == [tmp_path / "step_0000020"]                                # only an older intact one
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000030"]
    damaged = tmp_path / "damaged"
    assert sorted(p.name for p in damaged.iterdir()) == ["step_0000010", "step_0000040"]
    assert len((damaged / "step_0000040" / "model.safetensors").read_bytes()) == 100 < len(weights)
    assert len(lines) == 2 and all("moved to" in line and "nothing was deleted" in line for line in lines)
    assert "step_0000040 (model.safetensors: size 100 bytes" in lines[1]


def test_retention_keeps_keep_last_checkpoints_besides_the_final_one(tmp_path):
    for step in range(1, 7):
        save_tiny(tmp_path, step, final=step == 6)
    apply_retention(tmp_path, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000004", "step_0000005", "step_0000006"]


def test_retention_removes_temp_dirs_of_dead_writers_only(tmp_path):
    save_tiny(tmp_path, 1)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".tmp-step_0000002-{dead.pid}-00ff"
    live = tmp_path / f".tmp-step_0000002-{os.getppid()}-00aa"      # another live process may still write it
    stale.mkdir(), live.mkdir()
    assert apply_retention(tmp_path, keep_last=1) == [stale]
    assert live.is_dir() and not stale.exists()


def test_resolve_checkpoint_on_a_stage_dir_returns_the_newest_valid(tmp_path):
    stage = tmp_path / "runs" / "x" / "stage1"
    good = save_tiny(stage / "checkpoints", 10)
    bad = save_tiny(stage / "checkpoints", 20)
    flip_byte(bad / "state.pt")
    with pytest.warns(UserWarning, match="step_0000020"):
        assert resolve_checkpoint(stage) == good
    with pytest.warns(UserWarning, match="step_0000020"):
        assert resolve_checkpoint(str(stage / "checkpoints")) == good
    assert resolve_checkpoint(good) == good
    with pytest.raises(FileNotFoundError, match="stages stage1"):
        resolve_checkpoint(tmp_path / "runs" / "x")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_checkpoint(tmp_path / "nope")
    flip_byte(good / "state.pt")
    with pytest.warns(UserWarning), pytest.raises(FileNotFoundError, match="all 2 are partial or corrupt"):
        resolve_checkpoint(stage)


def test_an_older_checkpoint_with_moe_lr_scale_in_its_model_config_still_loads(tmp_path):
    """moe_lr_scale moved from the architecture config to Stage; configs saved before that still read."""
    import json

    from workbench.model import MicroDiT

    model = MicroDiT.from_preset("nano", depth=2, width=64, mixer_width=64)
    path = ckpt.save_checkpoint(tmp_path, 1, model=model, state=ckpt.TrainingState(step=1))
    config = json.loads((path / ckpt.CONFIG_FILE).read_text())
    config["model"]["moe_lr_scale"] = 0.5
    data = json.dumps(config).encode()
    (path / ckpt.CONFIG_FILE).write_bytes(data)
    manifest = json.loads((path / ckpt.MANIFEST).read_text())
    import hashlib

    manifest["files"][ckpt.CONFIG_FILE] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (path / ckpt.MANIFEST).write_text(json.dumps(manifest))
    assert "moe_lr_scale" not in ckpt.read_config(path)["model"]
    assert isinstance(ckpt.load_model(path), MicroDiT)
