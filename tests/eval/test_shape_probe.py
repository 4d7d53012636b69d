"""The shape probe: exactly chance for a model that ignores shape words, perfect for an oracle that draws the named
shape, deterministic for a real MicroDiT, and ``workbench eval shape-probe CKPT`` on a trained stage."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.eval.test_heldout import tiny_model
from workbench.cli import main
from workbench.data.codecs import PixelCodec
from workbench.data.shapes import SHAPES, render_scene
from workbench.diffusion import edm_scalings
from workbench.eval.shape_probe import (checkpoint_shape_probe, format_probe, probe_scenes, shape_probe,
                                        summarise_probe, swapped_captions)
from workbench.train import Trainer


class ShapeWordEncoder:
    """A text encoder whose state carries only the caption's shape (index + 1 in token 0, channel 0)."""

    def encode(self, captions):
        states = torch.zeros(len(captions), 4, 8)                           # (N, L, D)
        for i, caption in enumerate(captions):
            states[i, 0, 0] = 1 + next(k for k, s in enumerate(SHAPES) if s in caption)
        return states, torch.ones(len(captions), 4, dtype=torch.bool)


class Oracle(torch.nn.Module):
    """A denoiser that draws row i of the probe with the shape its caption names (exact when the caption is true)."""

    def __init__(self, n: int, resolution: int, sigma_data: float, uses_caption: bool = True):
        super().__init__()
        codec, scenes = PixelCodec(), probe_scenes(n)
        self.weight = torch.nn.Parameter(torch.zeros(()))                  # a parameter: the device and dtype
        self.targets = torch.stack([codec.encode(np.stack([render_scene(replace(
            s, objects=(replace(s.objects[0], shape=shape),)), resolution) for s in scenes]))
            for shape in SHAPES])                                           # (K, N, C, H, W)
        self.sigma_data, self.uses_caption = sigma_data, uses_caption

    def forward(self, x_in, c_noise, caption, caption_mask=None, mask_ratio=0.0):
        sigma = (4 * c_noise).exp().view(-1, 1, 1, 1)                       # (B, 1, 1, 1)
        c_skip, c_out, c_in = edm_scalings(sigma, self.sigma_data)
        k = caption[:, 0, 0].long() - 1 if self.uses_caption else torch.zeros(len(x_in), dtype=torch.long)
        target = self.targets[k, torch.arange(len(x_in))]                   # (B, C, H, W)
        return (target - c_skip * x_in / c_in) / c_out


def test_summary_counts_ties_as_a_share_and_the_gap_against_the_other_shapes():
    losses = torch.ones(6, 2, 3)                                            # (K, S, N): every caption equal
    truth = torch.tensor([0, 3, 5])
    flat = summarise_probe(losses, truth, [1.0, 2.5])
    assert flat["accuracy"] == pytest.approx(1 / 6) and flat["gap"] == 0.0 and flat["chance"] == pytest.approx(1 / 6)
    losses[truth, :, torch.arange(3)] = 0.5                                 # the true caption is best by 0.5
    best = summarise_probe(losses, truth, [1.0, 2.5])
    assert best["accuracy"] == 1.0 and best["gap"] == pytest.approx(0.5)
    assert best["by_sigma"]["2.5"] == {"accuracy": 1.0, "gap": pytest.approx(0.5)}
    losses[1, :, 0] = 0.5                                                   # a tie with the truth on scene 0
    assert summarise_probe(losses, truth, [1.0, 2.5])["accuracy"] == pytest.approx((0.5 + 1 + 1) / 3)


def test_captions_swap_only_the_shape_word():
    scenes = probe_scenes(12)
    assert all(s.template == "single" and len(s.objects) == 1 for s in scenes)
    for shape in SHAPES:
        for scene, caption in zip(scenes, swapped_captions(scenes, shape)):
            assert caption == scene.caption.replace(scene.objects[0].shape, shape) and shape in caption
    assert swapped_captions(scenes, scenes[0].objects[0].shape)[0] == scenes[0].caption


def test_an_oracle_scores_every_scene_and_a_caption_blind_model_scores_chance(one_thread):
    codec, n = PixelCodec(), 18
    oracle = shape_probe(Oracle(n, 16, 0.5), codec, ShapeWordEncoder(), 16, 0.5, n=n, batch=n)
    assert oracle["accuracy"] == 1.0 and oracle["gap"] > 0.01
    assert all(v["accuracy"] == 1.0 and v["gap"] > 0 for v in oracle["by_sigma"].values())
    blind = shape_probe(Oracle(n, 16, 0.5, uses_caption=False), codec, ShapeWordEncoder(), 16, 0.5, n=n, batch=n)
    assert blind["accuracy"] == pytest.approx(1 / 6) and blind["gap"] == 0.0


def test_a_real_model_gives_the_same_numbers_at_any_batch_size(shapes_data, one_thread):
    from workbench.data.text import open_text_encoder

    model, codec, text = tiny_model(), PixelCodec(), open_text_encoder("default")
    a = shape_probe(model, codec, text, 16, 0.5, n=12, batch=12)
    b = shape_probe(model, codec, text, 16, 0.5, n=12, batch=5)
    assert a["accuracy"] == b["accuracy"] and a["gap"] == pytest.approx(b["gap"], rel=1e-4, abs=1e-7)
    assert set(a["by_sigma"]) == {"1", "2.5", "6"} and a["n"] == 12 and model.training
    assert "accuracy" in format_probe(a)


def test_the_cli_probes_a_trained_stage(make_stage, tmp_path, capsys):
    stage = make_stage(steps=4, mask_ratio=0.0, log_every=4)
    Trainer(stage, progress=False).run()
    assert main(["eval", "shape-probe", str(stage.stage_dir), "--n", "6", "--json", str(tmp_path / "p.json")]) == 0
    printed = capsys.readouterr().out
    assert "shape probe of" in printed and "all σ" in printed
    report = json.loads((tmp_path / "p.json").read_text())
    assert report["n"] == 6 and report["protocol"]["chance_accuracy"] == pytest.approx(1 / 6)
    assert report == {**report, **checkpoint_shape_probe(stage.stage_dir, n=6)}
