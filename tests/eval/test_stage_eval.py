"""A stage's saved evaluation: the shape probe is scored with it, and a file saved before the probe existed gets
it added without sampling again."""

from __future__ import annotations

import json

from workbench.eval import stage_eval
from workbench.eval.stage_eval import evaluate_stage, headline, scores_path
from workbench.train import Trainer


def test_the_probe_is_saved_and_added_to_an_older_file_without_resampling(make_stage, one_thread, monkeypatch):
    stage = make_stage(steps=3, mask_ratio=0.0, log_every=3)
    Trainer(stage, progress=False).run()
    first = evaluate_stage(stage.stage_dir, samples_per_prompt=1, steps=2, fid_samples=0, probe_n=12,
                           progress=False)
    assert first["shape_probe"]["n"] == 12 and 0.0 <= first["shape_probe"]["accuracy"] <= 1.0
    assert headline(first)["shape_probe"] == first["shape_probe"]["accuracy"]
    older = {k: v for k, v in first.items() if k != "shape_probe"}                 # as saved before the probe
    scores_path(stage.stage_dir).write_text(json.dumps(older))

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled again")
    monkeypatch.setattr(stage_eval, "evaluate_sampler", no_sampling)
    again = evaluate_stage(stage.stage_dir, samples_per_prompt=1, steps=2, fid_samples=0, probe_n=12,
                           progress=False)
    assert again["shape_probe"] == first["shape_probe"]
    assert json.loads(scores_path(stage.stage_dir).read_text())["shape_probe"] == first["shape_probe"]
