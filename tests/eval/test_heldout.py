"""The held-out denoising loss: deterministic, independent of batching, lower after training, unmasked, and
``workbench eval val-loss CKPT`` on the shapes val split prepared with the checkpoint's own codec."""

from __future__ import annotations

import json

import pytest

from tests.train.conftest import TINY_MODEL
from workbench.cli import main
from workbench.eval.heldout import SIGMAS, format_heldout, heldout_loss, model_heldout_loss
from workbench.model import MicroDiT
from workbench.train import Trainer


def tiny_model(seed: int = 0) -> MicroDiT:
    import torch

    torch.manual_seed(seed)
    return MicroDiT.from_preset("nano", sample_size=16, **TINY_MODEL)


def test_the_same_weights_give_the_same_loss_at_any_batch_size(shapes_data, one_thread):
    model = tiny_model()
    a = model_heldout_loss(model, shapes_data, 16, 0.5, n=24, batch=8)
    b = model_heldout_loss(model, shapes_data, 16, 0.5, n=24, batch=5)
    c = model_heldout_loss(model, shapes_data, 16, 0.5, n=24, batch=8)
    assert a == c
    assert a["n"] == 24 and list(a["by_sigma"]) == [f"{s:g}" for s in SIGMAS]
    assert a["mean"] == pytest.approx(b["mean"], rel=1e-5)
    assert all(a["by_sigma"][k] == pytest.approx(b["by_sigma"][k], rel=1e-5) for k in a["by_sigma"])
    other_noise = model_heldout_loss(model, shapes_data, 16, 0.5, n=24, seed=1)
    assert other_noise["mean"] != a["mean"]                      # the seed is the noise's, and it is used
    assert model.training                                        # the model's mode is put back


def test_it_is_unmasked_and_leaves_the_model_unchanged(shapes_data, one_thread):
    import torch

    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    real = model.forward

    def spy(*args, **kwargs):
        seen.append(kwargs.get("mask_ratio", args[4] if len(args) > 4 else 0.0))
        return real(*args, **kwargs)
    model.forward = spy
    model_heldout_loss(model, shapes_data, 16, 0.5, n=8, batch=8)
    assert seen and all(r == 0.0 for r in seen)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_little_training_lowers_the_heldout_loss_and_the_cli_prints_it(make_stage, shapes_data, tmp_path, capsys,
                                                                        monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    stage = make_stage(steps=40, lr=2e-3, mask_ratio=0.0, ema_decay=0.0, log_every=40)
    trainer = Trainer(stage, progress=False)
    untrained = model_heldout_loss(trainer.sampling_model(), shapes_data, 16, 0.5, n=32)
    trainer.run()
    trainer.close()
    result = heldout_loss(stage.stage_dir, n=32)                 # the shapes val split, prepared for this codec
    print(format_heldout(result))
    assert result["mean"] < 0.7 * untrained["mean"]
    assert result["n"] == 32 and "val" in result["protocol"]["split"] and result["ema"] is False
    data = result["data"]
    assert str(tmp_path / "cache" / "heldout") in data           # cached, keyed by codec and text encoder

    again = heldout_loss(stage.stage_dir, data=data, n=32)       # deterministic: the same checkpoint, the same number
    assert again["mean"] == result["mean"] and again["by_sigma"] == result["by_sigma"]

    capsys.readouterr()
    assert main(["eval", "val-loss", str(stage.stage_dir), "--n", "32", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["mean"] == result["mean"] and printed["data"] == data
    assert main(["eval", "val-loss", str(stage.stage_dir), "--n", "32"]) == 0
    table = capsys.readouterr().out
    assert "sigma   0.02" in table and f"{result['mean']:.5f}" in table


def test_val_loss_without_a_checkpoint_says_what_to_give(capsys):
    assert main(["eval", "val-loss"]) == 2
    assert "workbench eval val-loss CKPT" in capsys.readouterr().err
