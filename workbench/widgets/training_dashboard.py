"""TrainingDashboard: live loss, learning-rate and throughput curves, loss per σ bin, the latest sample grid,
a progress bar, and Stop / Resume buttons for a :class:`workbench.train.Trainer`.

    from workbench import Stage, Trainer
    from workbench.widgets import TrainingDashboard
    trainer = Trainer(Stage.from_yaml("configs/demo/stage1.yaml"))
    dashboard = TrainingDashboard(trainer)
    dashboard                                   # shows the widget in a notebook
    dashboard.resume()                          # the Resume button: trainer.run_in_background()
    dashboard.stop()                            # the Stop button: ends at the next step, with a checkpoint

Stop works while ``trainer.run()`` runs in the cell's foreground too: in an ipykernel 7 kernel the
button's clicks are handled on a kernel subshell (``widgets.kernel_events``), so the run ends at the
next step with a checkpoint. Kernel › Interrupt does the same.

The dashboard registers ``on_step`` / ``on_samples`` / ``on_end`` callbacks on the trainer. Curves are redrawn
from ``trainer.history`` at most every ``throttle_s`` seconds (and at the last step); ``refresh()``
redraws them at any time, so a dashboard made after a run shows that run too.

The figures are plain plotly figures shown through ``ipywidgets.Output`` (JupyterLab's plotly renderer),
not ``FigureWidget``s: a FigureWidget is an anywidget, whose view gives up ("Failed to initialize model")
when its model takes over 2 s to initialise, as it does on a busy 2-core machine, leaving empty axes on the
first run. Each redraw replaces the Output's content with the figure's current JSON, which any view shows.
"""

from __future__ import annotations

import html
import json
import math
import threading
import time
from pathlib import Path

from ..diffusion.edm import DEFAULT_SIGMA_BIN_EDGES
from .common import DisplayMixin, blank_png
from .kernel_events import handle_during_cells

# (history key, subplot title) of the three curves, left to right
CURVES = (("loss", "loss"), ("lr", "learning rate"), ("img_per_s", "img/s"))
# the compositional scores plotted when the stage sets eval_every (keys of a step's "eval" metrics)
SCORES = ("overall", "single_object_shape", "single_object_colour")


def sigma_bin_names(edges=DEFAULT_SIGMA_BIN_EDGES) -> list[str]:
    """The ``loss_per_sigma`` keys written by ``loss_per_sigma_bin`` for these bin edges, low σ first."""
    return [f"{lo:g}-{hi:g}" for lo, hi in zip(edges[:-1], edges[1:])]


def _bin_low(name: str) -> float:
    try:
        return float(name.split("-")[0])
    except ValueError:
        return math.inf


def thin(records: list[dict], max_points: int) -> list[dict]:
    """At most about ``max_points`` records, evenly strided, always keeping the last one."""
    if max_points <= 0 or len(records) <= max_points:
        return records
    stride = math.ceil(len(records) / max_points)
    kept = records[::stride]
    return kept if kept[-1] is records[-1] else [*kept, records[-1]]


def figure_output(fig) -> dict:
    """A plotly figure as one ``display_data`` output (plotly's mimetype, rendered by JupyterLab's plotly
    extension and by nbconvert), for ``ipywidgets.Output.outputs``; plotly's encoder turns arrays into lists."""
    return {"output_type": "display_data", "metadata": {},
            "data": {"application/vnd.plotly.v1+json": {**json.loads(fig.to_json()), "config": {"displaylogo": False}},
                     "text/plain": f"<plotly figure: {len(fig.data)} traces>"}}


class TrainingDashboard(DisplayMixin):
    """A live view of a :class:`~workbench.train.Trainer` with Stop and Resume buttons.

    Args:
        trainer: the trainer to watch (its callbacks get the dashboard's ``on_step`` / ``on_samples``).
        throttle_s: redraw the curves at most this often from ``on_step`` (the progress bar follows every step).
        max_points: points per curve; longer histories are evenly thinned.

    Attributes:
        curves: ``plotly`` ``Figure`` with the traces "loss", "learning rate", "img/s" (one subplot each).
        sigma_fig: ``Figure`` with one "loss vs step" trace per σ bin (trace name = the bin, e.g. "0.1-0.5").
        scores_fig: ``Figure`` with the compositional scores over steps (``SCORES``), shown when the
            stage sets ``eval_every`` and the trainer has an evaluator.
        views: ``{figure name: ipywidgets.Output}`` showing each figure as it was last drawn.
        sample_image: ``ipywidgets.Image`` of the latest sample grid (``sample_path`` is its file).
        progress: ``ipywidgets.IntProgress`` (value = the trainer's step, max = the stage's steps).
        stop_button, resume_button, status: the controls and a one-line state (always the trainer's real one).
        live_stop: True when Stop is handled while a foreground ``run()`` keeps the cell busy.
        widget: the ``ipywidgets.VBox`` shown in notebooks.
    """

    def __init__(self, trainer, *, throttle_s: float = 0.5, max_points: int = 2000):
        import ipywidgets as W
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        self.trainer = trainer
        self.throttle_s = float(throttle_s)
        self.max_points = int(max_points)
        self.sample_path: Path | None = None
        self._lock = threading.RLock()
        self._watch_lock = threading.Lock()
        self._watched: threading.Thread | None = None
        self._watcher: threading.Thread | None = None
        self._last_refresh = -math.inf
        self._stopping = False

        # ------------------------------------------------------------ figures
        fig = make_subplots(rows=1, cols=len(CURVES), subplot_titles=[title for _, title in CURVES],
                            horizontal_spacing=0.08)
        for i, (_, title) in enumerate(CURVES):
            fig.add_scatter(x=[], y=[], mode="lines", name=title, row=1, col=i + 1)
        fig.update_layout(height=260, margin=dict(l=50, r=20, t=40, b=30), showlegend=False,
                          template="plotly_white")
        fig.update_xaxes(title_text="step")
        self.curves = fig
        self.sigma_fig = go.Figure(layout=dict(
            title=dict(text="loss per σ bin"), height=300, width=560, margin=dict(l=50, r=20, t=40, b=30),
            xaxis=dict(title=dict(text="step")), yaxis=dict(title=dict(text="loss")), template="plotly_white",
            legend=dict(title=dict(text="σ bin"))))
        for name in sigma_bin_names():
            self.sigma_fig.add_scatter(x=[], y=[], mode="lines+markers", name=name)
        self.scores_fig = go.Figure(layout=dict(
            title=dict(text="compositional scores (eval_every)"), height=300, width=560, template="plotly_white",
            margin=dict(l=50, r=20, t=40, b=30), xaxis=dict(title=dict(text="step")),
            yaxis=dict(title=dict(text="accuracy"), range=[0, 1.02])))
        for name in SCORES:
            self.scores_fig.add_scatter(x=[], y=[], mode="lines+markers", name=name)

        # ------------------------------------------------------------ controls
        stage = trainer.stage
        self.progress = W.IntProgress(value=trainer.step_count, min=0, max=stage.steps, description="step")
        self.stop_button = W.Button(description="Stop", icon="stop", button_style="danger")
        self.resume_button = W.Button(description="Resume", icon="play", button_style="success")
        self.status = W.HTML()
        self.sample_image = W.Image(value=blank_png(), format="png")
        self.stop_button.on_click(lambda _button: self.stop())
        self.live_stop = handle_during_cells(self.stop_button)
        self.resume_button.on_click(lambda _button: self.resume())
        self.views = {name: W.Output() for name in ("curves", "sigma_fig", "scores_fig")}
        self.widget = W.VBox([
            W.HTML(f"<b>{html.escape(stage.run)}/{html.escape(stage.name)}</b>"),
            W.HBox([self.progress, self.stop_button, self.resume_button, self.status]),
            self.views["curves"],
            W.HBox([self.views["sigma_fig"], W.VBox([W.HTML("<b>latest samples</b>"), self.sample_image])]),
        ] + ([self.views["scores_fig"]] if stage.eval_every else []))

        trainer.callbacks["on_step"].append(self._on_step)
        trainer.callbacks["on_samples"].append(self._on_samples)
        trainer.callbacks["on_end"].append(self._on_end)
        self.refresh()

    # ---------------------------------------------------------------- trainer callbacks
    def _on_step(self, trainer, metrics: dict) -> None:
        self.progress.value = metrics["step"]
        current = threading.current_thread()
        if current is not threading.main_thread():     # a background run: refresh once it ends
            self._watch(current)
        if time.monotonic() - self._last_refresh >= self.throttle_s or metrics["step"] >= trainer.stage.steps:
            self.refresh()

    def _on_end(self, trainer, history) -> None:
        self._stopping = False
        self.refresh()

    def _on_samples(self, trainer, path) -> None:
        self._show_sample(Path(path))

    def _show_sample(self, path: Path) -> None:
        self.sample_image.value = path.read_bytes()
        self.sample_path = path

    def _latest_sample(self) -> Path | None:
        folder = self.trainer.stage.stage_dir / "samples"
        files = sorted(folder.glob("step_*.png")) if folder.is_dir() else []
        return files[-1] if files else None

    # ---------------------------------------------------------------- drawing
    def refresh(self) -> None:
        """Redraw everything from ``trainer.history``, the trainer's state and the newest sample file."""
        with self._lock:
            records = thin(list(self.trainer.history), self.max_points)
            with self.curves.batch_update():
                for trace, (key, _) in zip(self.curves.data, CURVES):
                    points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
                    trace.x, trace.y = [p[0] for p in points], [p[1] for p in points]
            self._draw_sigma_bins(records)
            self._draw_scores(list(self.trainer.history))
            for name, view in self.views.items():
                view.outputs = (figure_output(getattr(self, name)),)
            latest = self._latest_sample()
            if latest is not None and latest != self.sample_path:
                self._show_sample(latest)
            self._sync_controls()
            self._last_refresh = time.monotonic()

    def _draw_sigma_bins(self, records: list[dict]) -> None:
        series: dict[str, tuple[list, list]] = {}
        for r in records:
            for name, value in (r.get("loss_per_sigma") or {}).items():
                xs, ys = series.setdefault(name, ([], []))
                xs.append(r["step"])
                ys.append(value)
        traces = {t.name: t for t in self.sigma_fig.data}
        for name in sorted(set(series) - set(traces), key=_bin_low):    # bins of other edges
            traces[name] = self.sigma_fig.add_scatter(x=[], y=[], mode="lines+markers", name=name).data[-1]
        with self.sigma_fig.batch_update():
            for name, trace in traces.items():
                trace.x, trace.y = series.get(name, ([], []))

    def _draw_scores(self, records: list[dict]) -> None:
        scored = [r for r in records if r.get("eval")]
        with self.scores_fig.batch_update():
            for trace in self.scores_fig.data:
                points = [(r["step"], r["eval"][trace.name]) for r in scored if trace.name in r["eval"]]
                trace.x, trace.y = [p[0] for p in points], [p[1] for p in points]

    def _sync_controls(self) -> None:
        trainer, stage = self.trainer, self.trainer.stage
        running = trainer.running
        self.progress.max, self.progress.value = stage.steps, trainer.step_count
        self.stop_button.disabled = not running
        self.resume_button.disabled = running or trainer.done
        last = trainer.history[-1] if trainer.history else {}
        parts = [f"step {trainer.step_count}/{stage.steps}"]
        if "loss" in last:
            parts.append(f"loss {last['loss']:.4f}")
        if "img_per_s" in last:
            parts.append(f"{last['img_per_s']:.1f} img/s")
        if trainer.error is not None:
            state = f"<span style='color:#c00'>error: {html.escape(str(trainer.error))}</span>"
        elif running:
            state = "stopping…" if self._stopping else "running"
        else:
            state = "done" if trainer.done else "stopped"
        self.status.value = " · ".join(parts + [state])

    # ---------------------------------------------------------------- buttons
    def stop(self) -> None:
        """Ask the run to end at the next step boundary, with a checkpoint (the Stop button); does not wait."""
        self._stopping = True
        self.trainer.stop(wait=False)
        self._sync_controls()

    def resume(self, steps: int | None = None) -> threading.Thread | None:
        """Continue training on a background thread (the Resume button); None when running or done."""
        with self._lock:
            if self.trainer.running or self.trainer.done:
                self._sync_controls()
                return None
            self._stopping = False
            thread = self.trainer.run_in_background(steps)
            self._watch(thread)
            self._sync_controls()
            return thread

    def _watch(self, thread: threading.Thread) -> None:
        """Refresh once ``thread`` (a background training run) ends."""
        with self._watch_lock:
            if self._watched is thread:
                return
            self._watched = thread

            def wait():
                thread.join()
                self.refresh()

            self._watcher = threading.Thread(target=wait, name="dashboard-watch", daemon=True)
            self._watcher.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the watched background run and the dashboard's final refresh; True when both ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in (self._watched, self._watcher):
            if thread is not None:
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t is not None and t.is_alive() for t in (self._watched, self._watcher))

    def close(self) -> None:
        """Unregister the trainer callbacks and close the widgets."""
        for key, fn in (("on_step", self._on_step), ("on_samples", self._on_samples), ("on_end", self._on_end)):
            if fn in self.trainer.callbacks[key]:
                self.trainer.callbacks[key].remove(fn)
        self.widget.close()
