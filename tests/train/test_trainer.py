"""The Trainer, in process: learning, metrics, exact resume, EMA, stop from a thread, non-finite steps, retention."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch
from PIL import Image

from tests.train.conftest import final_weights, losses
from workbench.data.loader import PreparedLoader
from workbench.diffusion import EDMLoss
from workbench.train import Trainer, TrainingDiverged
from workbench.train import checkpoint as ckpt
from workbench.train.checkpoint import load_model
from workbench.train.inference import sample_checkpoint
from workbench.train.trainer import lr_factor


def raw_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    """A detached copy of the trainer's raw weights."""
    return {k: v.detach().clone() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()}


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def checkpoint_steps(stage) -> list[int]:
    return [int(p.name.split("_")[1]) for p in ckpt.list_checkpoints(stage.checkpoint_dir)]


def metrics_records(stage) -> list[dict]:
    return [json.loads(line) for line in (stage.stage_dir / "metrics.jsonl").read_text().splitlines()]


def fixed_eval_loss(model, stage, trainer) -> float:
    """EDM loss of ``model`` on the first 32 rows, at fixed noise levels and noise, without masking."""
    batch = next(iter(PreparedLoader(stage.data, stage.resolution, 32, shuffle=False)))
    gen = torch.Generator().manual_seed(123)
    model.eval()
    with torch.no_grad():
        out = EDMLoss(trainer.edm)(model, batch.latents, batch.caption_emb, batch.caption_mask, 0.0, gen)
    return out.loss.item()


def poison(trainer: Trainer, bad_steps) -> None:
    """Make the loss (and so every gradient) NaN on the given 1-based steps."""
    real = trainer.loss_fn

    def loss_fn(*args, **kwargs):
        out = real(*args, **kwargs)
        if trainer.step_count + 1 in bad_steps:
            out.loss = out.loss * float("nan")
            out.per_sample = out.per_sample * float("nan")
        return out
    trainer.loss_fn = loss_fn


# --------------------------------------------------------------------------- learning and metrics

def test_training_lowers_the_edm_loss(make_stage):
    stage = make_stage(steps=40, lr=1e-3)
    trainer = Trainer(stage, progress=False)
    model = trainer.accelerator.unwrap_model(trainer.model)
    before = fixed_eval_loss(model, stage, trainer)
    history = trainer.run()
    after = fixed_eval_loss(model, stage, trainer)
    loss = np.array([h["loss"] for h in history])
    first, last = loss[:10].mean(), loss[-10:].mean()
    print(f"train loss first10 {first:.3f} last10 {last:.3f} ({last / first:.2f}x); "
          f"fixed-eval loss {before:.3f} -> {after:.3f} ({after / before:.2f}x)")
    assert len(loss) == 40 and np.isfinite(loss).all()
    assert last < 0.8 * first
    assert after < 0.6 * before


def test_metrics_jsonl_records_each_step(make_stage):
    stage = make_stage(steps=6, warmup_steps=4, log_every=2, lr=2e-3)
    trainer = Trainer(stage, progress=False)
    history = trainer.run()
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5, 6]
    records = metrics_records(stage)
    assert [r["step"] for r in records] == [1, 2, 4, 6]            # log_every=2, plus the first step
    for r in records:
        assert {"loss", "lr", "grad_norm", "img_per_s", "mask_ratio", "nonfinite_steps", "loss_per_sigma"} <= set(r)
        assert r["mask_ratio"] == 0.5 and r["nonfinite_steps"] == 0 and r["img_per_s"] > 0
        assert r["loss_per_sigma"] and all(math.isfinite(v) for v in r["loss_per_sigma"].values())
    # the logged LR is the one the step used: warmup 1/4, 2/4, 3/4, 4/4 of 2e-3, then constant
    assert [h["lr"] for h in history] == pytest.approx([2e-3 * lr_factor(s, stage) for s in range(6)])
    assert history[0]["lr"] == pytest.approx(0.5e-3)
    assert (stage.stage_dir / "stage.yaml").is_file()


def test_moe_parameters_get_the_scaled_learning_rate(make_stage):
    stage = make_stage(steps=2, warmup_steps=2, moe_lr_scale=0.5)
    trainer = Trainer(stage, progress=False)
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert set(groups) == {"dense", "moe"} and groups["moe"]["params"]
    trainer.step()
    assert groups["moe"]["lr"] == pytest.approx(0.5 * groups["dense"]["lr"])
    assert groups["dense"]["lr"] == pytest.approx(stage.lr * lr_factor(1, stage))


def test_results_do_not_depend_on_the_micro_batch_split(make_stage):
    """Per-sample noise comes from (seed, step, row): accumulation over 4 x 2 equals one batch of 8."""
    whole = make_stage(name="whole", steps=3)
    split = make_stage(name="split", steps=3, micro_batch=2)
    a, b = Trainer(whole, progress=False), Trainer(split, progress=False)
    assert b.accumulation == 4
    la, lb = [h["loss"] for h in a.run()], [h["loss"] for h in b.run()]
    assert lb == pytest.approx(la, rel=1e-5)
    wa, wb = raw_state(a), raw_state(b)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4     # Adam amplifies rounding


# --------------------------------------------------------------------------- resume

def test_resume_reproduces_uninterrupted_losses_weights_and_ema(make_stage, tmp_path):
    kwargs = dict(steps=6, ema_decay=0.9, caption_dropout=0.3)
    reference = make_stage(runs_dir=str(tmp_path / "a"), **kwargs)
    Trainer(reference, progress=False).run()

    stage = make_stage(runs_dir=str(tmp_path / "b"), **kwargs)
    first = Trainer(stage, progress=False)
    first.run(steps=3)
    assert checkpoint_steps(stage) == [3] and not first.done
    again = Trainer(stage, progress=False)                          # resume="auto"
    assert again.step_count == 3 and again.resumed_from.endswith("step_0000003")
    again.run()
    assert losses(stage) == losses(reference)                         # bit-identical floats, every step
    assert same_tensors(final_weights(stage), final_weights(reference))
    assert same_tensors(final_weights(stage, ema=True), final_weights(reference, ema=True))


def test_resume_never_refuses_existing_checkpoints(make_stage):
    stage = make_stage(steps=2)
    Trainer(stage, progress=False).run()
    with pytest.raises(ValueError, match="already has checkpoints"):
        Trainer(stage, progress=False, resume="never")


# --------------------------------------------------------------------------- EMA and sampling

def test_ema_follows_its_formula_differs_from_raw_and_both_sample(make_stage, tmp_path):
    stage = make_stage(steps=5, ema_decay=0.8, ema_start=2, lr=3e-3)
    raw_after = {}
    trainer = Trainer(stage, progress=False, on_step=lambda t, m: raw_after.__setitem__(m["step"], raw_state(t)))
    grids = []
    real_save = trainer.grid.save
    trainer.grid.save = lambda model, path, device=None: grids.append(model) or real_save(model, path, device)
    trainer.run()

    # EMA copies the raw weights up to ema_start, then averages with decay 0.8
    names = [n for n, _ in trainer.ema.named_parameters()]
    expected = {n: raw_after[2][n].clone() for n in names}
    for s in (3, 4, 5):
        expected = {n: expected[n] + (raw_after[s][n] - expected[n]) * (1 - 0.8) for n in names}
    ema = dict(trainer.ema.named_parameters())
    for n in names:
        torch.testing.assert_close(ema[n].detach(), expected[n], rtol=1e-6, atol=1e-7)
    raw = raw_state(trainer)
    assert any(not torch.equal(ema[n], raw[n]) for n in names)

    # the end-of-stage sample grid used the EMA weights
    assert grids == [trainer.ema]
    assert (stage.stage_dir / "samples" / "step_0000005.png").is_file()

    # both weight sets come back from the checkpoint and both sample
    ema_model, raw_model = load_model(stage.stage_dir), load_model(stage.stage_dir, ema=False)
    assert same_tensors({n: p for n, p in ema_model.named_parameters()}, {n: p.detach() for n, p in ema.items()})
    assert same_tensors(dict(raw_model.state_dict()), raw)
    images = {}
    for use_ema in (True, False):
        out = sample_checkpoint(stage.stage_dir, ["a red circle"], out=tmp_path / f"ema{use_ema}.png", steps=2,
                                cfg_scale=2.0, per_prompt=2, use_ema=use_ema)
        images[use_ema] = np.asarray(Image.open(out))
        assert images[use_ema].ndim == 3 and images[use_ema].shape[2] == 3 and images[use_ema].std() > 0
    assert not np.array_equal(images[True], images[False])


# --------------------------------------------------------------------------- stop, non-finite, retention

def wait_for(predicate, timeout=60.0):
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_stop_from_another_thread_ends_at_a_step_boundary_with_a_resumable_checkpoint(make_stage, capsys):
    stage = make_stage(steps=12)
    calls = []
    trainer = Trainer(stage, progress=False, on_step=lambda t, m: (calls.append(m["step"]), time.sleep(0.1)))
    thread = trainer.run_in_background()
    wait_for(lambda: len(calls) >= 3)
    trainer.stop()
    assert not thread.is_alive() and not trainer.running and trainer.error is None
    stopped = trainer.step_count
    assert 3 <= stopped < stage.steps and calls == list(range(1, stopped + 1))
    assert len(trainer.history) == stopped and trainer.interrupted and trainer.stop_signal == "stop"
    path = ckpt.latest_valid_checkpoint(stage.checkpoint_dir)
    assert path.name == f"step_{stopped:07d}" and ckpt.verify_checkpoint(path) == [] and not ckpt.is_final(path)
    assert f"stopped (Stop button / trainer.stop()) at step {stopped}; checkpoint {path}" in capsys.readouterr().out
    assert same_tensors(final_weights(stage), raw_state(trainer))

    resumed = Trainer(stage, progress=False)
    assert resumed.step_count == stopped and len(resumed.history) == stopped
    resumed.run()
    assert resumed.done and resumed.step_count == 12
    assert [r["step"] for r in resumed.history] == list(range(1, 13))
    assert ckpt.is_final(ckpt.latest_valid_checkpoint(stage.checkpoint_dir))


def test_after_a_stop_between_log_lines_the_summary_reads_the_newest_checkpoint(make_stage):
    from workbench.report import samples_html, stage_summary

    stage = make_stage(steps=12, log_every=5)
    trainer = Trainer(stage, progress=False, on_step=lambda t, m: t.stop(wait=False) if m["step"] == 7 else None)
    trainer.run()
    path = ckpt.latest_valid_checkpoint(stage.checkpoint_dir)
    summary = stage_summary(stage.stage_dir)                 # what notebook 02's summary cell shows after Stop
    assert trainer.step_count == 7 and path.name == "step_0000007"
    assert (summary["step"], summary["latest_checkpoint"], summary["complete"]) == (7, str(path), False)
    assert "step 7 of 12" in samples_html([summary])


def test_run_continues_after_a_stop(make_stage):
    """A stop request belongs to the run it stopped: a later run() trains again."""
    stage = make_stage(steps=6)
    trainer = Trainer(stage, progress=False, on_step=lambda t, m: time.sleep(0.05))
    trainer.run_in_background()
    wait_for(lambda: trainer.step_count >= 1)
    trainer.stop()
    assert trainer.step_count < 6
    trainer.run()
    assert trainer.done


def test_a_callback_can_stop_its_own_background_run(make_stage):
    stage = make_stage(steps=10)
    trainer = Trainer(stage, progress=False, on_step=lambda t, m: m["step"] == 2 and t.stop())
    trainer.run_in_background().join(60)
    assert trainer.error is None and trainer.step_count == 2
    assert ckpt.latest_valid_checkpoint(stage.checkpoint_dir).name == "step_0000002"


def test_a_non_finite_step_is_skipped_and_counted(make_stage):
    stage = make_stage(steps=5)
    weights = {}
    trainer = Trainer(stage, progress=False, on_step=lambda t, m: weights.__setitem__(m["step"], raw_state(t)))
    poison(trainer, {3})
    history = trainer.run()
    assert [math.isfinite(h["loss"]) for h in history] == [True, True, False, True, True]
    assert [h["nonfinite_steps"] for h in history] == [0, 0, 1, 1, 1]
    assert trainer.nonfinite_total == 1 and trainer.nonfinite_streak == 0
    assert same_tensors(weights[3], weights[2]) and not same_tensors(weights[4], weights[3])
    assert all(torch.isfinite(v).all() for v in raw_state(trainer).values())


def test_consecutive_non_finite_steps_stop_training_and_keep_the_last_good_checkpoint(make_stage):
    stage = make_stage(steps=20, checkpoint_every=1, keep_last=1, max_nonfinite=3, ema_decay=0.9)
    weights = {}
    trainer = Trainer(stage, progress=False, on_step=lambda t, m: weights.__setitem__(m["step"], raw_state(t)))
    poison(trainer, range(5, 100))
    with pytest.raises(TrainingDiverged, match=r"3 consecutive steps had a non-finite loss") as err:
        trainer.run()
    assert str(stage.checkpoint_dir) in str(err.value)
    assert trainer.step_count == 7 and trainer.nonfinite_total == 3
    assert same_tensors(weights[6], weights[4])                       # skipped steps leave the weights alone
    path = ckpt.latest_valid_checkpoint(stage.checkpoint_dir)
    assert checkpoint_steps(stage) == [4] and ckpt.verify_checkpoint(path) == []
    assert same_tensors(final_weights(stage), weights[4])
    assert all(torch.isfinite(t).all() for t in final_weights(stage, ema=True).values())
    logged = [r["nonfinite_steps"] for r in metrics_records(stage)]
    assert logged == [0, 0, 0, 0, 1, 2]
    resumed = Trainer(stage, progress=False)                          # the good checkpoint resumes
    assert resumed.step_count == 4


def test_retention_keeps_the_last_n_and_the_final_checkpoint(make_stage):
    stage = make_stage(steps=5, checkpoint_every=1, keep_last=2)
    Trainer(stage, progress=False).run()
    assert checkpoint_steps(stage) == [3, 4, 5]                       # keep_last=2 besides the final one
    assert [ckpt.is_final(p) for p in ckpt.list_checkpoints(stage.checkpoint_dir)] == [False, False, True]
    longer = stage.replace(steps=8)                                   # the same stage, extended
    Trainer(longer, progress=False).run()
    assert checkpoint_steps(stage) == [5, 6, 7, 8]                    # step 5 stays: it was a final one
    assert all(ckpt.verify_checkpoint(p) == [] for p in ckpt.list_checkpoints(stage.checkpoint_dir))


def test_stages_with_different_mixed_precision_run_in_one_process(make_stage):
    """A notebook trains stage after stage in one kernel; accelerate's state is process-wide."""
    bf16 = Trainer(make_stage(name="bf16", steps=1, mixed_precision="bf16"), progress=False)
    assert bf16.accelerator.mixed_precision == "bf16"
    assert math.isfinite(bf16.run()[-1]["loss"])
    fp32 = Trainer(make_stage(name="fp32", steps=1), progress=False)
    assert fp32.accelerator.mixed_precision == "no"
    assert math.isfinite(fp32.run()[-1]["loss"])


def test_eval_every_puts_the_evaluator_scores_into_that_steps_metrics(make_stage):
    calls = []

    def evaluator(trainer):
        calls.append(trainer.step_count)
        return {"overall": 0.1 * trainer.step_count, "skipped": None}

    stage = make_stage(steps=4, eval_every=2, log_every=3)
    trainer = Trainer(stage, progress=False, evaluator=evaluator)
    trainer.run()
    assert calls == [2, 4]
    assert [r.get("eval") for r in trainer.history] == [None, {"overall": 0.2}, None, {"overall": 0.4}]
    logged = [json.loads(line) for line in (stage.stage_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "eval" in r] == [2, 4]


def test_eval_every_without_an_evaluator_warns(make_stage):
    with pytest.warns(UserWarning, match="no evaluator"):
        Trainer(make_stage(eval_every=2), progress=False)


def test_fused_adamw_and_the_three_op_clip_match_torchs_reference_loop(make_stage, monkeypatch):
    """The host-overhead kernels (fused AdamW, foreach clipping, the listed-once EMA) change no result beyond
    float rounding: 6 steps against torch's per-parameter AdamW and ``clip_grad_norm_``, with clipping active."""
    from workbench.train import optim

    stage = make_stage(steps=6, grad_clip=0.05, ema_decay=0.9, log_every=1)
    fast = Trainer(stage.replace(name="fast"), progress=False)
    fast_history = [fast.step() for _ in range(6)]
    assert fast.optimizer.defaults["fused"] is True

    def reference_clip(self):
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        return torch.nn.utils.clip_grad_norm_(params, self.stage.grad_clip, foreach=False)

    monkeypatch.setattr(optim, "adamw_kernel", lambda stage, device: {"foreach": False, "fused": False})
    monkeypatch.setattr(Trainer, "_clip_gradients", reference_clip)
    slow = Trainer(stage.replace(name="reference"), progress=False)
    slow_history = [slow.step() for _ in range(6)]
    assert not slow.optimizer.defaults["fused"]
    assert all(h["grad_norm"] > 0.05 for h in slow_history)                 # the clip was active
    for a, b in zip(fast_history, slow_history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    for name, module in (("model", "raw_model"), ("ema", "ema")):
        for p, q in zip(getattr(fast, module).parameters(), getattr(slow, module).parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=f"{name} parameters differ")
    fast.close()
    slow.close()
