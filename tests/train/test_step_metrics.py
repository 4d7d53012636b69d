"""A step reads nothing back from the device: its metrics wait on it (``PendingMetrics``) and are read for many
steps at once, with the same history, log and non-finite handling as a read after every step."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.train.conftest import final_weights
from tests.train.test_trainer import poison
from workbench.train import Trainer, TrainingDiverged
from workbench.train.step_metrics import PendingMetrics, read_pending_steps

# ops that copy a value to the host: on a GPU each one waits for every queued kernel
HOST_READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default,
              torch.ops.aten.is_nonzero.default, torch.ops.aten.nonzero.default}


class CountHostReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))


def test_a_step_reads_nothing_back_until_its_metrics_are_read(make_stage):
    trainer = Trainer(make_stage(steps=10, ema_decay=0.9, ema_start=1), progress=False)
    trainer.step()
    batches = [trainer._batches() for _ in range(3)]          # the loader's host work (caption trimming) apart
    trainer._batches = lambda: batches.pop(0)
    with CountHostReads() as counter:
        for _ in range(3):
            trainer._step()
    assert counter.reads == [] and len(trainer.pending) == 3
    rows = read_pending_steps(trainer)
    assert [r["step"] for r in rows] == [2, 3, 4] and [h["step"] for h in trainer.history] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 and r["loss_per_sigma"] for r in rows)
    assert len(trainer.pending) == 0
    trainer.close()


def test_reading_every_few_steps_gives_the_same_history_log_and_weights(make_stage):
    every, sparse = make_stage(name="every", steps=7, log_every=3), make_stage(name="sparse", steps=7, log_every=3)
    a, b = Trainer(every, progress=False), Trainer(sparse, progress=False)
    b.read_every = 5                                         # as on a GPU: reads at log steps and every 5th
    a.run(), b.run()
    assert [h["step"] for h in b.history] == list(range(1, 8))
    for x, y in zip(a.history, b.history):
        assert x["loss"] == y["loss"] and x["grad_norm"] == y["grad_norm"]
        assert x["loss_per_sigma"] == y["loss_per_sigma"]
    lines = [p.stage_dir.joinpath("metrics.jsonl").read_text().count("\n") for p in (every, sparse)]
    assert lines[0] == lines[1] == 4                         # steps 1, 3, 6 and the last
    wa, wb = final_weights(every), final_weights(sparse)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_non_finite_steps_are_skipped_on_the_device_and_counted_when_read(make_stage):
    stage = make_stage(steps=20, max_nonfinite=3, ema_decay=0.9, log_every=100)
    trainer = Trainer(stage, progress=False)
    trainer.read_every = 4
    poison(trainer, range(3, 100))
    with pytest.raises(TrainingDiverged, match="3 consecutive steps") as err:
        trainer.run()
    assert "last at step 5" in str(err.value)
    assert trainer.nonfinite_total == 3 and trainer.step_count == 8       # read at step 8: 5 was the third
    weights = {k: v.detach().clone() for k, v in trainer.raw_model.state_dict().items()}
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert all(torch.isfinite(p).all() for p in trainer.ema.parameters())


def test_pending_metrics_are_one_read_for_many_steps():
    pending = PendingMetrics(global_batch=8, mask_ratio=0.5, repa=True)
    for step in (1, 2):
        pending.add(step=step, lr=1e-3, seconds=0.5, loss=torch.tensor(0.25 * step), grad_norm=torch.tensor(2.0),
                    finite=torch.tensor(step == 1), sigma_sums=torch.tensor([[1.0, 2.0], [0.0, 0.0]]),
                    repa_loss=torch.tensor(0.1))
    rows = pending.read()
    assert [r["step"] for r in rows] == [1, 2] and [r["finite"] for r in rows] == [True, False]
    assert rows[1]["loss"] == 0.5 and rows[0]["loss_per_sigma"] == {"0.002-0.1": 0.5}
    assert rows[0]["repa_loss"] == pytest.approx(0.1) and rows[0]["img_per_s"] == pytest.approx(16, rel=0.1)
    assert pending.read() == []
