"""Stages: the paper's four configs, YAML, errors before training, and stage-to-stage chaining."""

from __future__ import annotations

import dataclasses

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from tests.train.conftest import ROOT, TINY_MODEL
from workbench.train import Stage, Trainer, check_stage
from workbench.train import checkpoint as ckpt
from workbench.train.trainer import lr_factor

PAPER = ROOT / "configs" / "paper"

# the paper's four training stages: batch 2048, AdamW wd 0.1 betas (0.9, 0.999), bf16 everywhere
SHARED = dict(model="xl_2", global_batch=2048, weight_decay=0.1, betas=(0.9, 0.999), mixed_precision="bf16",
              caption_dropout=0.1, sigma_data=0.9)
RECIPE = {
    1: dict(resolution=256, mask_ratio=0.75, steps=250_000, lr=2.4e-4, schedule="cosine", warmup_steps=2500,
            grad_clip=0.25, ema_decay=0.0, p_mean=-0.6, p_std=1.2, init_from=None),
    2: dict(resolution=256, mask_ratio=0.0, steps=30_000, lr=8e-5, schedule="constant", warmup_steps=0,
            grad_clip=0.25, ema_decay=0.0, p_mean=-0.6, p_std=1.2, init_from="runs/paper/stage1", init_mode="full"),
    3: dict(resolution=512, mask_ratio=0.75, steps=50_000, lr=8e-5, schedule="constant", warmup_steps=500,
            grad_clip=0.5, ema_decay=0.99975, p_mean=0.0, p_std=0.6, init_from="runs/paper/stage2",
            init_mode="weights"),
    4: dict(resolution=512, mask_ratio=0.0, steps=5000, lr=8e-5, schedule="constant", warmup_steps=0,
            grad_clip=0.5, ema_decay=0.9975, p_mean=0.0, p_std=0.6, init_from="runs/paper/stage3"),
}


def raw_state(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()}


# --------------------------------------------------------------------------- configs

@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_paper_stage_configs_are_the_papers_recipe(n):
    stage = Stage.from_yaml(PAPER / f"stage{n}.yaml")
    expected = {**SHARED, **RECIPE[n], "name": f"stage{n}", "run": "paper"}
    assert {k: getattr(stage, k) for k in expected} == expected
    assert stage.global_batch % stage.micro_batch == 0
    assert stage.model_overrides == ({} if n <= 2 else {"pos_interp_scale": 2.0, "sample_size": 64})
    assert (stage.edm.sigma_data, stage.edm.p_mean, stage.edm.p_std) == (0.9, RECIPE[n]["p_mean"], RECIPE[n]["p_std"])


def test_paper_stage1_lr_schedule_warms_up_then_decays_to_7_9e_5():
    stage = Stage.from_yaml(PAPER / "stage1.yaml")

    def lr(step):
        return stage.lr * lr_factor(step, stage)

    assert lr(0) == pytest.approx(2.4e-4 / 2500)
    assert lr(2499) == pytest.approx(2.4e-4)
    assert lr(2500) == pytest.approx(2.4e-4)
    assert lr(250_000 - 1) == pytest.approx(7.9e-5, rel=0.01)
    values = [lr(s) for s in range(2500, 250_000, 997)]
    assert all(a >= b for a, b in zip(values, values[1:]))             # cosine: monotone decay
    stage3 = Stage.from_yaml(PAPER / "stage3.yaml")
    assert stage3.lr * lr_factor(0, stage3) == pytest.approx(8e-5 / 500)
    assert stage3.lr * lr_factor(10_000, stage3) == pytest.approx(8e-5)


def test_a_cooldown_keeps_the_constant_lr_then_decays_linearly_to_the_final_fraction():
    constant = Stage(steps=1000, lr=1e-3, schedule="constant", warmup_steps=50)
    cooled = dataclasses.replace(constant, cooldown_fraction=0.2, final_lr_fraction=0.0)
    assert [lr_factor(s, cooled) for s in range(800)] == [lr_factor(s, constant) for s in range(800)]
    tail = [lr_factor(s, cooled) for s in range(800, 1000)]
    assert tail[0] == pytest.approx(1 - 1 / 200) and tail[-1] == 0.0           # the last step runs at 0 x lr
    assert all(a > b for a, b in zip(tail, tail[1:]))                        # linear, monotone
    assert lr_factor(999, dataclasses.replace(cooled, final_lr_fraction=0.1)) == pytest.approx(0.1)


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "demo").glob("stage*.yaml")), ids=lambda p: p.stem)
def test_demo_stage_configs_load(path):
    stage = Stage.from_yaml(path)                                       # validated; the lead tunes the values
    assert stage.name == path.stem and stage.run == "demo"
    assert yaml.safe_load(path.read_text())["steps"] == stage.steps > 0


def test_stage_yaml_round_trip(tmp_path):
    stage = Stage(name="s", run="r", steps=7, betas=(0.8, 0.95), model_overrides={"depth": 3},
                  sample_prompts=["a red circle"], init_from="runs/r/s0", init_mode="full")
    stage.to_yaml(tmp_path / "s.yaml")
    assert Stage.from_yaml(tmp_path / "s.yaml") == stage
    assert Stage.from_yaml(tmp_path / "s.yaml", steps=9).steps == 9
    assert stage.replace(lr=1e-3).lr == 1e-3 and stage.lr == 2.4e-4
    assert stage.stage_dir == Path("runs/r/s") and stage.checkpoint_dir == Path("runs/r/s/checkpoints")


# --------------------------------------------------------------------------- bad configs

def test_unknown_yaml_key_suggests_the_closest_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text((PAPER / "stage1.yaml").read_text() + "mask_ration: 0.5\n")
    with pytest.raises(ValueError, match=r"has no field 'mask_ration' \(did you mean 'mask_ratio'\?\)"):
        Stage.from_yaml(path)
    with pytest.raises(ValueError, match=r"did you mean 'warmup_steps'"):
        Stage.from_yaml(PAPER / "stage1.yaml", warmup_step=10)


@pytest.mark.parametrize("changes, message", [
    (dict(lr=-1e-4), r"Stage\.lr: expected a positive number, got -0\.0001"),
    (dict(lr=0.0), r"Stage\.lr"),
    (dict(mask_ratio=1.0), r"Stage\.mask_ratio: expected a value in \[0, 1\), got 1\.0"),
    (dict(global_batch=12, micro_batch=8), r"Stage\.global_batch: expected a multiple of micro_batch=8, got 12"),
    (dict(steps=0), r"Stage\.steps"),
    (dict(ema_decay=1.0), r"Stage\.ema_decay"),
    (dict(init_mode="everything"), r"Stage\.init_mode: expected weights or full"),
    (dict(model="huge"), r"unknown MicroDiT preset 'huge'"),
    (dict(model_overrides={"detph": 2}), r"did you mean 'depth'"),
    (dict(loss_band=(6.0, 1.0)), r"Stage\.loss_band: expected two noise levels 0 < min < max"),
    (dict(loss_band_weight=0.0), r"Stage\.loss_band_weight"),
    (dict(cooldown_fraction=1.0, schedule="constant"), r"Stage\.cooldown_fraction: expected a value in \[0, 1\)"),
    (dict(cooldown_fraction=0.2), r"Stage\.cooldown_fraction: expected 0 with schedule cosine"),
])
def test_invalid_stage_fields_fail_when_the_stage_is_built(changes, message):
    with pytest.raises(ValueError, match=message):
        Stage(**changes)


@pytest.mark.parametrize("changes, error, message", [
    (dict(resolution=64), ValueError, r"Stage\.resolution: 64 px was not prepared in .* \(it has 16, 32\)"),
    (dict(model_overrides={**TINY_MODEL, "patch_size": 32}), ValueError,
     r"16 px gives 16x16 latents, which patch_size=32 cannot tile"),
    (dict(init_from="runs/nowhere/stage1"), FileNotFoundError, r"no checkpoint at runs/nowhere/stage1"),
    (dict(data="data/prepared/missing"), FileNotFoundError, r"prepared dataset folder .*missing.* does not exist"),
    (dict(model_overrides={**TINY_MODEL, "in_channels": 4}), ValueError, r"expects 4-channel latents"),
    (dict(fsdp=True), ValueError, r"Stage\.fsdp shards the model across processes, but this run has 1; set "
                                  r"fsdp: false, or launch N of them: accelerate launch --multi_gpu"),
])
def test_stage_problems_fail_before_training_starts(make_stage, changes, error, message):
    stage = make_stage(**changes)
    with pytest.raises(error, match=message):
        Trainer(stage, progress=False)
    assert not stage.stage_dir.exists()                                # nothing written: no run folder at all


def test_global_batch_must_divide_over_micro_batches_and_processes(make_stage):
    stage = make_stage(global_batch=8, micro_batch=4)
    assert check_stage(stage, num_processes=2)                         # 8 = 4 x 2
    with pytest.raises(ValueError, match=r"multiple of micro_batch x processes = 4 x 3, got 8"):
        check_stage(stage, num_processes=3)
    with pytest.raises(ValueError, match=r"micro_batch x processes = 4 x 3"):
        Trainer(stage, accelerator=SimpleNamespace(num_processes=3), progress=False)
    assert not stage.stage_dir.exists()


def test_init_from_another_architecture_names_the_field(make_stage):
    first = make_stage(name="stage1", steps=1, model_overrides={**TINY_MODEL, "depth": 2})
    Trainer(first, progress=False).run()
    second = make_stage(name="stage2", init_from=str(first.stage_dir))
    with pytest.raises(ValueError, match=r"another architecture \(depth: checkpoint 2 vs stage 3\)"):
        Trainer(second, progress=False)
    assert not second.stage_dir.exists()


# --------------------------------------------------------------------------- chaining

@pytest.fixture
def stage1(make_stage):
    """A finished 3-step stage 1 at 16 px with 50% masking and an EMA; returns (stage, trainer)."""
    stage = make_stage(name="stage1", steps=3, ema_decay=0.9, lr=2e-3)
    trainer = Trainer(stage, progress=False)
    trainer.run()
    return stage, trainer


def test_stage2_full_starts_from_stage1_weights_and_carries_the_optimiser(make_stage, stage1):
    first, t1 = stage1
    saved = torch.load(ckpt.resolve_checkpoint(first.stage_dir) / ckpt.OPTIMIZER_FILE, weights_only=True)
    stage = make_stage(name="stage2", steps=2, mask_ratio=0.0, init_from=str(first.stage_dir), init_mode="full",
                       lr=5e-4, warmup_steps=2, weight_decay=0.05, betas=(0.8, 0.99), ema_decay=0.9)
    t2 = Trainer(stage, progress=False)
    assert t2.step_count == 0 and t2.init_info == {"path": str(ckpt.resolve_checkpoint(first.stage_dir)),
                                                   "mode": "full"}
    w1, w2 = raw_state(t1), raw_state(t2)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert all(torch.equal(a, b) for a, b in zip(t1.ema.parameters(), t2.ema.parameters()))
    state = t2.optimizer.state_dict()["state"]
    assert state and state.keys() == saved["state"].keys()
    for i, s in state.items():
        assert torch.equal(s["exp_avg"], saved["state"][i]["exp_avg"])
        assert torch.equal(s["exp_avg_sq"], saved["state"][i]["exp_avg_sq"])
        assert float(s["step"]) == 3
    # the optimiser state is carried, but its settings are stage 2's: LR schedule, weight decay, betas
    for group in t2.optimizer.param_groups:
        assert group["lr"] == pytest.approx(5e-4 * lr_factor(0, stage))
        assert group["weight_decay"] == 0.05 and tuple(group["betas"]) == (0.8, 0.99)
    history = t2.run()
    assert [h["lr"] for h in history] == pytest.approx([2.5e-4, 5e-4])
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)


def test_stage_with_resolution_change_starts_from_weights_with_a_fresh_optimiser(make_stage, stage1):
    first, t1 = stage1
    stage = make_stage(name="stage3", steps=2, resolution=32, init_from=str(first.stage_dir), init_mode="weights",
                       model_overrides={**TINY_MODEL, "pos_interp_scale": 2.0}, ema_decay=0.9)
    t3 = Trainer(stage, progress=False)
    model = t3.accelerator.unwrap_model(t3.model)
    assert model.arch.pos_interp_scale == 2.0
    w1, w3 = raw_state(t1), raw_state(t3)
    assert all(torch.equal(w1[k], w3[k]) for k in w1)
    assert not t3.optimizer.state_dict()["state"]                      # fresh optimiser
    assert t3.optimizer.param_groups[0]["lr"] == stage.lr
    seen = []
    handle = model.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    history = t3.run()
    handle.remove()
    assert set(seen) == {(8, 3, 32, 32)}                               # the model trained at 32 px
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    assert ckpt.read_config(ckpt.resolve_checkpoint(stage.stage_dir))["model"]["pos_interp_scale"] == 2.0


def test_paths_and_numpy_numbers_are_accepted_as_their_plain_types(tmp_path):
    import numpy as np

    stage = Stage(runs_dir=tmp_path / "runs", data=tmp_path / "data", init_from=tmp_path / "s1",
                  steps=np.int64(10), lr=np.float32(1e-3), mask_ratio=np.float64(0.5))
    assert (stage.runs_dir, stage.data, stage.init_from) == (str(tmp_path / "runs"), str(tmp_path / "data"),
                                                             str(tmp_path / "s1"))
    assert type(stage.steps) is int and type(stage.lr) is float and stage.mask_ratio == 0.5
    with pytest.raises(ValueError, match="Stage.steps: expected an integer"):
        Stage(steps=True)


def test_ema_power_warms_the_decay_up_to_ema_decay_and_zero_power_keeps_it_fixed():
    from workbench.train.stages import ema_decay_at

    fixed = Stage(ema_decay=0.99, ema_start=10)
    assert [ema_decay_at(s, fixed) for s in (5, 10, 11, 500)] == [0.0, 0.0, 0.99, 0.99]
    warm = Stage(ema_decay=0.99, ema_start=10, ema_power=6.94)
    decays = [ema_decay_at(s, warm) for s in range(11, 2000)]
    assert decays[0] == pytest.approx(0.5 ** 7.94) and decays[-1] == 0.99
    assert all(a <= b for a, b in zip(decays, decays[1:]))           # rises monotonically, capped
    with pytest.raises(ValueError, match="ema_power"):
        Stage(ema_power=-1)


def test_the_loss_band_reaches_the_edm_loss():
    edm = Stage(loss_band_weight=2.0, loss_band=[0.5, 4]).edm
    assert (edm.band_weight, edm.band_min, edm.band_max) == (2.0, 0.5, 4.0)
    assert Stage().edm.band_weight == 1.0                                        # off by default
