"""Stage options that change how a step runs, not what it computes: activation checkpointing and compiled blocks."""

from __future__ import annotations

import pytest
import torch

from tests.train.conftest import final_weights, losses
from workbench.bench.step import profile_steps
from workbench.model import MicroDiT
from workbench.train import Trainer
from workbench.train.checkpoint import load_model


def test_gradient_checkpointing_gives_the_same_gradients(caption_batch):
    model = MicroDiT.from_preset("nano", depth=3, mixer_depth=1)
    x, c_noise = torch.randn(2, 3, 16, 16), torch.rand(2)
    caption, mask = caption_batch()
    mask_noise = torch.rand(2, 64)

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        model(x, c_noise, caption, mask, mask_ratio=0.5, mask_noise=mask_noise).sample.square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    model.enable_gradient_checkpointing()
    assert model.gradient_checkpointing
    recomputed = gradients()
    assert plain.keys() == recomputed.keys() and len(plain) > 50
    for name in plain:
        torch.testing.assert_close(recomputed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)
    with torch.no_grad():                                   # inference never recomputes
        model(x, c_noise, caption, mask)


def test_a_stage_with_activation_checkpointing_trains_like_one_without(make_stage):
    plain = make_stage(name="plain", steps=3)
    recomputed = make_stage(name="recomputed", steps=3, activation_checkpointing=True)
    for stage in (plain, recomputed):
        Trainer(stage, progress=False).run()
    assert losses(recomputed) == pytest.approx(losses(plain), rel=1e-5)
    a, b = final_weights(plain), final_weights(recomputed)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.slow
def test_compiled_blocks_train_like_eager_with_fewer_dispatched_ops(make_stage):
    """Stage.compile compiles each block in place (CPU inductor here): the same losses, plain checkpoint names,
    and far fewer top-level aten ops per step (each compiled block is one call forward and one backward)."""
    eager = Trainer(make_stage(name="eager", steps=8), progress=False)
    compiled = Trainer(make_stage(name="compiled", steps=8, compile=True), progress=False)
    for trainer in (eager, compiled):
        for _ in range(5):
            trainer.step()                                  # the compiled one compiles at its first step
    ops = {name: profile_steps(t, 2)["aten_ops_per_step"] for name, t in (("eager", eager), ("compiled", compiled))}
    for trainer in (eager, compiled):
        trainer.run()
        trainer.close()
    assert losses(compiled.stage) == pytest.approx(losses(eager.stage), rel=2e-3)
    assert ops["compiled"] < 0.6 * ops["eager"], ops
    assert set(final_weights(compiled.stage)) == set(final_weights(eager.stage))   # no _orig_mod. prefixes
    load_model(compiled.stage.stage_dir)
