"""``mixed_precision: bf16-mixed``: bf16 weights compute, fp32 master weights train; it follows fp32 training within
a stated tolerance, its checkpoints hold the fp32 master, and it resumes exactly."""

from __future__ import annotations

import pytest
import torch

from tests.train.conftest import final_weights, losses
from workbench.train import Trainer

# bf16 keeps 8 bits of mantissa: over 12 steps of the tiny stage the losses stay within this of fp32 training
# (measured: 9e-4 at most)
LOSS_RTOL = 5e-3


def test_bf16_mixed_follows_fp32_training_with_fp32_master_weights(make_stage):
    fp32 = make_stage(name="fp32", steps=12, ema_decay=0.9)
    mixed = make_stage(name="mixed", steps=12, ema_decay=0.9, mixed_precision="bf16-mixed")
    Trainer(fp32, progress=False).run()
    trainer = Trainer(mixed, progress=False)
    assert trainer.accelerator.mixed_precision == "no"                     # no autocast on top
    assert all(p.dtype == torch.bfloat16 for p in trainer.model.parameters())
    assert all(p.dtype == torch.float32 for p in trainer.raw_model.parameters())
    trainer.run()
    a, b = losses(fp32), losses(mixed)
    assert [b[s] for s in sorted(b)] == pytest.approx([a[s] for s in sorted(a)], rel=LOSS_RTOL)
    assert [a[s] for s in sorted(a)] != [b[s] for s in sorted(b)]           # it did compute in bf16
    weights = final_weights(mixed)
    assert all(t.dtype == torch.float32 for t in weights.values())          # the checkpoint holds the master
    compute = dict(trainer.model.named_parameters())
    assert all(torch.equal(compute[k].detach(), weights[k].to(torch.bfloat16)) for k in compute)


def test_bf16_mixed_resumes_exactly(make_stage, tmp_path):
    whole = make_stage(name="whole", steps=5, mixed_precision="bf16-mixed", runs_dir=str(tmp_path / "a"))
    Trainer(whole, progress=False).run()
    part = make_stage(name="whole", steps=5, mixed_precision="bf16-mixed", runs_dir=str(tmp_path / "b"))
    Trainer(part, progress=False).run(steps=3)
    Trainer(part, progress=False).run()                                     # resumes at step 3
    assert losses(part) == losses(whole)
    a, b = final_weights(whole), final_weights(part)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bf16_mixed_refuses_what_it_does_not_support_yet(make_stage):
    with pytest.raises(ValueError, match="bf16-mixed does not combine with fsdp or REPA"):
        make_stage(mixed_precision="bf16-mixed", repa_weight=0.5)
