"""TrainingDashboard on a tiny real Trainer: live curves and progress, the sample grid, Stop and Resume, refresh."""

import threading

import pytest

from workbench.data.prepare import prepare
from workbench.train import Stage, Trainer
from workbench.train.checkpoint import list_checkpoints
from workbench.widgets import SamplerPanel, TrainingDashboard
from workbench.widgets.common import blank_png
from workbench.widgets.training_dashboard import sigma_bin_names, thin

from . import one_torch_thread  # noqa: F401
from .png import png_size

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = 4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """16 shapes scenes at 16 px, pixel codec, MiniLM captions (trimmed padding: fast)."""
    out = tmp_path_factory.mktemp("prepared") / "shapes16"
    prepare(source="shapes", out=out, resolutions=(16,), limit=16, text_encoder_options={"trim_padding": True},
            progress=False)
    return out


def make_trainer(data, runs_dir, **overrides) -> Trainer:
    stage = Stage(**{"model": "nano", "model_overrides": {"depth": 2, "width": 64, "mixer_width": 64},
                     "runs_dir": str(runs_dir), "data": str(data), "resolution": 16, "steps": STEPS,
                     "global_batch": 4, "micro_batch": 4, "sample_every": 2, "sample_steps": 2, "log_every": 1,
                     "sample_prompts": ["a red circle", "a blue square"], **overrides})
    return Trainer(stage, progress=False)


def recorder(trainer, dashboard):
    """An on_step callback after the dashboard's: what the dashboard showed at each step."""
    seen = []
    trainer.callbacks["on_step"].append(lambda t, m: seen.append(
        (m["step"], dashboard.progress.value, len(dashboard.curves.data[0].x))))
    return seen


def test_dashboard_follows_a_background_run_to_the_end(data, tmp_path):
    trainer = make_trainer(data, tmp_path)
    dashboard = TrainingDashboard(trainer, throttle_s=0)
    assert [t.name for t in dashboard.curves.data] == ["loss", "learning rate", "img/s"]
    assert all(len(t.x) == 0 for t in dashboard.curves.data) and dashboard.sample_image.value == blank_png()
    assert dashboard.progress.value == 0 and dashboard.progress.max == STEPS and dashboard.stop_button.disabled
    seen = recorder(trainer, dashboard)
    samples = []
    dashboard.sample_image.observe(lambda change: samples.append(change["new"]), names="value")

    dashboard.resume_button.click()
    assert dashboard.wait(timeout=120)
    assert trainer.error is None and not trainer.running and trainer.step_count == STEPS
    assert seen == [(s, s, s) for s in range(1, STEPS + 1)]       # live: progress and a point per step
    for trace, key in zip(dashboard.curves.data, ("loss", "lr", "img_per_s")):
        assert list(trace.x) == [1, 2, 3, 4]
        assert list(trace.y) == [r[key] for r in trainer.history]
    assert dashboard.progress.value == STEPS
    [shown] = dashboard.views["curves"].outputs                    # what the browser draws: the same points
    plotted = shown["data"]["application/vnd.plotly.v1+json"]["data"]
    assert [t["name"] for t in plotted] == ["loss", "learning rate", "img/s"]
    assert plotted[0]["x"] == [1, 2, 3, 4] and plotted[0]["y"] == [r["loss"] for r in trainer.history]
    bins = {t.name: len(t.x) for t in dashboard.sigma_fig.data}
    assert sum(bins.values()) == sum(len(r["loss_per_sigma"]) for r in trainer.history) > 0
    assert len(samples) == 2                                         # the grids of steps 2 and 4
    assert dashboard.sample_path.name == "step_0000004.png"
    assert dashboard.sample_image.value == dashboard.sample_path.read_bytes()
    assert png_size(dashboard.sample_image.value)[0] > 0
    assert dashboard.resume_button.disabled and dashboard.stop_button.disabled
    assert "done" in dashboard.status.value and f"step {STEPS}/{STEPS}" in dashboard.status.value


def test_stop_ends_the_background_run_and_resume_continues_to_the_end(data, tmp_path):
    trainer = make_trainer(data, tmp_path, sample_every=0)
    dashboard = TrainingDashboard(trainer, throttle_s=0)

    def stop_at_two(t, metrics):
        if metrics["step"] == 2:
            assert threading.current_thread() is not threading.main_thread()
            assert not dashboard.stop_button.disabled and dashboard.resume_button.disabled
            dashboard.stop_button.click()
    trainer.callbacks["on_step"].append(stop_at_two)

    dashboard.resume_button.click()
    assert dashboard.wait(timeout=120)
    assert not trainer.running and trainer.error is None and trainer.step_count == 2
    assert [p.name for p in list_checkpoints(trainer.stage.checkpoint_dir)] == ["step_0000002"]
    assert dashboard.progress.value == 2 and len(dashboard.curves.data[0].x) == 2
    assert not dashboard.resume_button.disabled and dashboard.stop_button.disabled
    assert "stopped" in dashboard.status.value

    trainer.callbacks["on_step"].remove(stop_at_two)
    dashboard.resume_button.click()
    assert dashboard.wait(timeout=120)
    assert trainer.step_count == STEPS and not trainer.running and trainer.error is None
    assert dashboard.progress.value == STEPS and list(dashboard.curves.data[0].x) == [1, 2, 3, 4]
    assert dashboard.sample_path.name == "step_0000004.png"           # the final grid
    assert dashboard.resume() is None                                # done: nothing to resume


def test_throttled_curves_redraw_at_most_every_throttle_s_but_always_at_the_end(data, tmp_path):
    trainer = make_trainer(data, tmp_path, sample_every=0)
    dashboard = TrainingDashboard(trainer, throttle_s=3600)
    seen = recorder(trainer, dashboard)
    trainer.run()                                                    # a plain run in this thread
    assert seen == [(1, 1, 0), (2, 2, 0), (3, 3, 0), (4, 4, 4)]      # progress every step, curves at the end


def test_during_a_foreground_run_the_status_says_running_and_stop_works(data, tmp_path):
    """The tour's pattern, trainer.run() in the cell: the status is true at every step and "done" at the end."""
    trainer = make_trainer(data, tmp_path, steps=8, sample_every=0)
    dashboard = TrainingDashboard(trainer, throttle_s=0)
    states = []
    def record_state(trainer, metrics):
        states.append((dashboard.status.value, dashboard.stop_button.disabled))

    trainer.callbacks["on_step"].append(record_state)
    trainer.callbacks["on_step"].append(lambda t, m: m["step"] == 5 and dashboard.stop_button.click())
    trainer.run()
    assert trainer.step_count == 5 and not trainer.running
    assert all("running" in status or "stopping" in status for status, _ in states)
    assert not any(disabled for _, disabled in states[:4])          # Stop is live while the run is
    assert dashboard.status.value.startswith("step 5/8") and dashboard.status.value.endswith("stopped")
    assert dashboard.stop_button.disabled and not dashboard.resume_button.disabled
    assert list_checkpoints(trainer.stage.checkpoint_dir)[-1].name == "step_0000005"
    trainer.run()
    assert dashboard.status.value.startswith("step 8/8") and dashboard.status.value.endswith("done")
    assert dashboard.progress.value == dashboard.progress.max == 8


def test_refresh_shows_a_finished_run_and_a_resumed_trainer(data, tmp_path):
    trainer = make_trainer(data, tmp_path)
    trainer.run()
    dashboard = TrainingDashboard(trainer)                          # made after the run
    assert list(dashboard.curves.data[0].x) == [1, 2, 3, 4] and dashboard.progress.value == STEPS
    assert dashboard.sample_path.name == "step_0000004.png" and dashboard.sample_image.value
    again = TrainingDashboard(make_trainer(data, tmp_path))          # resumes from the final checkpoint
    assert list(again.curves.data[0].y) == [r["loss"] for r in trainer.history]
    assert "done" in again.status.value and again.resume_button.disabled

    # the sampler panel opens the same checkpoint, with the data's text encoder and codec
    panel = SamplerPanel(trainer.stage.stage_dir, steps=2, batch_size=2)
    assert panel.text_encoder.trim_padding and panel.resolution == 16 and panel.edm.sigma_data == 0.9
    panel.generate(wait=True)
    assert panel.images.shape == (2, 16, 16, 3)


def test_close_unregisters_the_callbacks(data, tmp_path):
    trainer = make_trainer(data, tmp_path)
    dashboard = TrainingDashboard(trainer)
    assert dashboard._on_step in trainer.callbacks["on_step"]
    assert "application/vnd.jupyter.widget-view+json" in dashboard._repr_mimebundle_()
    dashboard.close()
    assert trainer.callbacks["on_step"] == [] and trainer.callbacks["on_samples"] == []


def test_sigma_bins_and_thinning():
    assert sigma_bin_names((0.002, 0.1, 80.0)) == ["0.002-0.1", "0.1-80"]
    records = [{"step": i} for i in range(1, 10_001)]
    thinned = thin(records, 100)
    assert len(thinned) <= 101 and thinned[0]["step"] == 1 and thinned[-1]["step"] == 10_000
    assert thin(records[:5], 100) == records[:5]


def test_scores_curve_shows_the_evaluators_numbers_when_eval_every_is_set(data, tmp_path):
    stage = make_trainer(data, tmp_path / "runs").stage.replace(eval_every=2, name="scored")
    trainer = Trainer(stage, progress=False, evaluator=lambda t: {"overall": t.step_count / 10,
                                                                 "single_object_shape": 0.5})
    dashboard = TrainingDashboard(trainer)
    assert dashboard.views["scores_fig"] in dashboard.widget.children
    trainer.run()
    dashboard.refresh()
    traces = {t.name: (list(t.x), list(t.y)) for t in dashboard.scores_fig.data}
    assert traces["overall"] == ([2, 4], [0.2, 0.4])
    assert traces["single_object_shape"] == ([2, 4], [0.5, 0.5])
    assert traces["single_object_colour"] == ([], [])
    plain = TrainingDashboard(make_trainer(data, tmp_path / "plain"))
    assert plain.views["scores_fig"] not in plain.widget.children
