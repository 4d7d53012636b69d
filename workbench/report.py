"""Results as tables, figures and HTML: stage summaries, loss curves, sample grids, and ``report.html``.

The notebooks and the pipeline show results through these functions, so a notebook cell stays a
one-line call and ``report.html`` shows exactly what the notebooks show::

    from workbench.report import run_summary, loss_figure, samples_html, write_report
    summaries = run_summary("runs/demo")          # one dict per stage: final loss, samples, checkpoint ...
    loss_figure(summaries)                        # plotly: loss over the global step, one trace per stage
    HTML(samples_html(summaries))                 # the latest sample grid of each stage
    write_report("runs/demo")                     # runs/demo/report.html, self-contained (no CDN)

A stage folder is what ``workbench.train.Trainer`` writes: ``stage.yaml``, ``metrics.jsonl``,
``samples/step_NNNNNNN.png`` and ``checkpoints/step_NNNNNNN/``.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .images import image_grid, png_data_uri
from .io import atomic_write_text
from .errors import MissingFileError

STATE_FILE = "pipeline_state.json"     # written by workbench.pipeline; gives the stage order of a run
REPORT_FILE = "report.html"


# ---------------------------------------------------------------------------------------------
#  Reading a run
# ---------------------------------------------------------------------------------------------

def read_metrics(stage_dir: str | os.PathLike) -> list[dict]:
    """The records of the latest training run in ``<stage_dir>/metrics.jsonl`` (empty when there is none).

    A stage restarted from scratch (e.g. after a failure before its first checkpoint) appends a new
    run whose steps start again; only the records after the last such restart are returned.
    """
    from .train.monitor import MetricsLog

    records = MetricsLog(Path(stage_dir) / "metrics.jsonl").read()
    start = 0
    for i in range(1, len(records)):
        if records[i].get("step", 0) <= records[i - 1].get("step", 0):
            start = i
    return records[start:]


def latest_samples(stage_dir: str | os.PathLike) -> Path | None:
    """The newest ``samples/step_NNNNNNN.png`` of a stage, or None."""
    found = sorted((Path(stage_dir) / "samples").glob("step_*.png"))
    return found[-1] if found else None


def latest_checkpoint(stage_dir: str | os.PathLike) -> Path | None:
    """The stage's newest ``checkpoints/step_NNNNNNN`` folder (final or not), or None."""
    from .train import checkpoint as ckpt

    found = ckpt.list_checkpoints(Path(stage_dir) / "checkpoints")
    return found[-1] if found else None


def final_checkpoint(stage_dir: str | os.PathLike) -> Path | None:
    """The stage's newest checkpoint when its manifest marks it final (the stage finished), else None."""
    from .train import checkpoint as ckpt

    latest = latest_checkpoint(stage_dir)
    return latest if latest is not None and ckpt.is_final(latest) else None


def stage_dirs(run_dir: str | os.PathLike, names: Iterable[str] | None = None) -> list[Path]:
    """The stage folders of a run, in training order.

    The order is ``names`` (a list, or a comma-separated string) when given, else the pipeline's
    order (``pipeline_state.json``), else alphabetical. Only folders holding a ``stage.yaml``
    (written when a Trainer starts) count; a named stage without one is an error.
    """
    run_dir = Path(run_dir)
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()] or None
    if not run_dir.is_dir():
        raise MissingFileError(f"run folder {str(run_dir)!r} does not exist")
    found = {p.name: p for p in run_dir.iterdir() if (p / "stage.yaml").is_file()}
    if names is None:
        order = []
        state = run_dir / STATE_FILE
        if state.is_file():
            order = [s["stage"] for s in json.loads(state.read_text()).get("steps", {}).values() if s.get("stage")]
        names = [n for n in order if n in found] + sorted(n for n in found if n not in order)
    missing = [n for n in names if n not in found]
    if missing:
        raise MissingFileError(f"stages: {', '.join(missing)} not found in {run_dir} (it has "
                                f"{', '.join(sorted(found)) or 'no stage folders'})")
    return [found[n] for n in names]


def read_stage_scores(stage_dir: str | os.PathLike) -> dict | None:
    """The stage's saved evaluation (``eval.stage_eval``), or None."""
    from .eval.stage_eval import read_stage_scores as read

    return read(stage_dir)


def stage_summary(stage_dir: str | os.PathLike, tail: float = 0.1) -> dict:
    """What one stage did: its settings, losses, speed, final checkpoint and latest samples.

    ``loss_tail`` is the mean loss of the last ``tail`` fraction of the logged records (less noisy
    than the last one). Times are estimated from the logged img/s.
    """
    from .train import Stage

    stage_dir = Path(stage_dir)
    stage = Stage.from_yaml(stage_dir / "stage.yaml")
    records = read_metrics(stage_dir)
    losses = [r["loss"] for r in records if isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"])]
    speeds = [r["img_per_s"] for r in records if r.get("img_per_s")]
    n_tail = max(1, int(len(losses) * tail))
    latest = latest_checkpoint(stage_dir)
    # the newest checkpoint is where the stage is (a Stop between log lines is past the last logged record)
    step = max(records[-1]["step"] if records else 0, int(latest.name.split("_")[-1]) if latest else 0)
    img_per_s = float(np.median(speeds)) if speeds else None
    checkpoint, samples = final_checkpoint(stage_dir), latest_samples(stage_dir)
    return {
        "stage": stage.name, "run": stage.run, "stage_dir": str(stage_dir), "resolution": stage.resolution,
        "model": stage.model, "mask_ratio": stage.mask_ratio, "steps": stage.steps, "step": step,
        "global_batch": stage.global_batch, "init_from": stage.init_from,
        "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
        "loss_tail": float(np.mean(losses[-n_tail:])) if losses else None,
        "min_loss": min(losses) if losses else None,
        "img_per_s": img_per_s,
        "train_seconds": step * stage.global_batch / img_per_s if img_per_s else None,
        "complete": checkpoint is not None,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "latest_checkpoint": str(latest) if latest else None,
        "samples": str(samples) if samples else None,
        "sample_prompts": list(stage.sample_prompts),
        "scores": read_stage_scores(stage_dir),
    }


def run_summary(run_dir: str | os.PathLike, names: Iterable[str] | None = None) -> list[dict]:
    """``stage_summary`` of every stage of a run, in training order."""
    return [stage_summary(d) for d in stage_dirs(run_dir, names)]


# ---------------------------------------------------------------------------------------------
#  Figures and HTML pieces
# ---------------------------------------------------------------------------------------------

def loss_figure(summaries: list[dict], height: int = 360):
    """Plotly figure: training loss over the global step (stages laid end to end) and the learning rate."""
    import plotly.colors
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=["training loss", "learning rate"], horizontal_spacing=0.1)
    palette = plotly.colors.qualitative.Plotly
    offset = 0
    for i, s in enumerate(summaries):
        line = dict(color=palette[i % len(palette)])
        records = read_metrics(s["stage_dir"])
        x = [offset + r["step"] for r in records]
        label = f"{s['stage']} ({s['resolution']} px, mask {s['mask_ratio']:g})"
        fig.add_scatter(x=x, y=[r.get("loss") for r in records], mode="lines", name=label, legendgroup=s["stage"],
                        line=line, row=1, col=1)
        fig.add_scatter(x=x, y=[r.get("lr") for r in records], mode="lines", name=label, legendgroup=s["stage"],
                        line=line, showlegend=False, row=1, col=2)
        offset += s["step"]
    fig.update_xaxes(title_text="step (all stages)")
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_layout(height=height, template="plotly_white", margin=dict(l=50, r=20, t=40, b=40))
    return fig


def samples_html(summaries: list[dict], width: int = 320) -> str:
    """HTML: the latest sample grid of each stage side by side (images embedded, base64 PNG)."""
    cells = []
    for s in summaries:
        where = f"step {s['step']}" + (f" of {s['steps']}" if s.get("steps") else "")
        title = html.escape(f"{s['stage']}: {s['resolution']} px, mask {s['mask_ratio']:g}, {where}")
        if s.get("samples"):
            body = (f'<img src="{png_data_uri(s["samples"])}" style="width:{width}px;image-rendering:pixelated" '
                    f'alt="samples of {html.escape(s["stage"])}"/>')
        else:
            body = "<i>no samples yet (a stage samples at its end, and every sample_every steps)</i>"
        cells.append(f'<figure style="display:inline-block;margin:6px;vertical-align:top;max-width:{width}px">{body}'
                     f"<figcaption>{title}</figcaption></figure>")
    return '<div class="samples">' + "".join(cells) + "</div>"


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def table_html(rows: list[dict], columns: list[str] | None = None, headers: dict | None = None,
               formats: dict | None = None) -> str:
    """A plain HTML table of dicts (floats to 4 significant digits), scrolling sideways when wider than the page.

    ``headers`` renames columns for display; ``formats`` maps a column to a function value -> text.
    """
    if not rows:
        return "<p><i>nothing to show</i></p>"
    columns = columns or list(rows[0])
    headers, formats = headers or {}, formats or {}
    head = "".join(f"<th>{html.escape(headers.get(c, c))}</th>" for c in columns)
    def cell(row: dict, column: str) -> str:
        value = row.get(column)
        return html.escape(formats[column](value)) if column in formats and value is not None else _fmt(value)

    body = "".join("<tr>" + "".join(f"<td>{cell(r, c)}</td>" for c in columns) + "</tr>" for r in rows)
    return (f'<div style="overflow-x:auto;max-width:100%"><table class="wb-table"><thead><tr>{head}</tr></thead>'
            f'<tbody>{body}</tbody></table></div>')


METRIC_COLUMNS = ["stage", "resolution", "mask_ratio", "step", "steps", "global_batch", "first_loss", "final_loss",
                  "loss_tail", "min_loss", "img_per_s", "train_seconds", "complete"]


def metrics_html(summaries: list[dict]) -> str:
    """HTML table of the stage summaries' metrics."""
    return table_html(summaries, METRIC_COLUMNS)


def scores_html(summaries: list[dict]) -> str:
    """HTML: the compositional scores and FID-proxy of every evaluated stage (columns), with the protocol."""
    from .eval.compositional import scores_table

    done = [s for s in summaries if s.get("scores")]
    if not done:
        return "<p><i>no stage has been evaluated yet (workbench eval, or the pipeline's evaluate step)</i></p>"
    tables = {s["stage"]: {r["score"]: r["value"] for r in scores_table(s["scores"]["compositional"])} for s in done}
    names = list(next(iter(tables.values())))
    rows = [{"score": n, **{stage: t.get(n) for stage, t in tables.items()}} for n in names]
    rows.append({"score": "FID-proxy (lower is better)",
                 **{s["stage"]: (s["scores"].get("fid_proxy") or {}).get("value") for s in done}})
    for key, label in (("accuracy", "shape probe accuracy (chance 1/6)"),
                       ("gap", "shape probe gap (0: shape ignored)")):
        rows.append({"score": label, **{s["stage"]: (s["scores"].get("shape_probe") or {}).get(key) for s in done}})
    p = done[-1]["scores"]["protocol"]
    note = (f"Compositional score: {p['samples_per_prompt']} samples per prompt of the 55 fixed prompts, "
            f"{p['steps']} {p['sampler']} steps, CFG {p['cfg_scale']}, seed {p['seed']}, EMA weights; the detector "
            f"is {p['detector_sha256']}. Overall is the mean over the six categories (held-out pairs apart). "
            f"FID-proxy: {p['fid_samples']} samples of val captions against {p['fid_reference']} real val scenes, "
            f"on shapes features: not comparable with published FID. Shape probe: does the model use the caption's "
            f"shape word? Loss at mid σ with the true caption vs each other shape, on single-object val scenes "
            f"(docs/evaluation.md).")
    return table_html(rows, ["score", *tables]) + f"<p><small>{html.escape(note)}</small></p>"


def failures_html(summary: dict, width: int = 128) -> str:
    """HTML: a stage's worst failures (prompt, and what the detector saw)."""
    scores = summary.get("scores") or {}
    cells = []
    for f in scores.get("failures", []):
        image = Path(summary["stage_dir"]) / f["image"]
        if not image.is_file():
            continue
        cells.append(f'<figure style="display:inline-block;margin:4px;width:{width}px;vertical-align:top">'
                     f'<img src="{png_data_uri(image)}" style="width:{width}px;image-rendering:pixelated"/>'
                     f'<figcaption><b>{html.escape(f["prompt"])}</b><br/>saw: {html.escape(f["saw"])}'
                     f"</figcaption></figure>")
    if not cells:
        return "<p><i>no failures recorded</i></p>"
    return f"<p>Worst failures of {html.escape(summary['stage'])}:</p><div>{''.join(cells)}</div>"


def stage_html(stage) -> str:
    """HTML table of a ``Stage``'s main fields (the rest is in its ``stage.yaml``)."""
    fields = ["name", "run", "data", "resolution", "model", "model_overrides", "mask_ratio", "steps", "global_batch",
              "micro_batch", "lr", "schedule", "warmup_steps", "ema_decay", "mixed_precision", "init_from",
              "init_mode"]
    d = stage.to_dict()
    return table_html([{"field": f, "value": d[f]} for f in fields])


# ---------------------------------------------------------------------------------------------
#  Prepared data preview
# ---------------------------------------------------------------------------------------------

def prepared_preview(path: str | os.PathLike, n: int = 16, resolution: int | None = None,
                     columns: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Decode the first ``n`` rows of a prepared dataset with its codec: (grid uint8 (H, W, 3), captions).

    ``resolution`` defaults to the largest prepared one.
    """
    import torch

    from .data.prepared_format import PreparedInfo, load_prepared, open_prepared_codec

    info = PreparedInfo.read(path)
    resolution = int(resolution or info.resolutions[-1])
    column = info.column(resolution)
    ds = load_prepared(path, format="numpy")
    batch = ds[: max(1, min(int(n), len(ds)))]
    latents = np.asarray(batch[column], dtype=np.float32)                          # (n, C, h, w)
    captions = [str(c) for c in batch["caption"]]
    images = open_prepared_codec(info).decode(torch.from_numpy(latents))            # (n, H, W, 3) uint8
    return image_grid(images, columns), captions


def prepared_preview_html(path: str | os.PathLike, n: int = 16, resolution: int | None = None,
                          width: int = 384) -> str:
    """HTML: a decoded sample grid of a prepared dataset and its captions."""
    grid, captions = prepared_preview(path, n, resolution)
    items = "".join(f"<li>{html.escape(c)}</li>" for c in captions)
    return (f'<div style="display:flex;gap:16px"><img src="{png_data_uri(grid)}" style="width:{width}px;'
            f'image-rendering:pixelated" alt="prepared samples"/><ol style="font-size:smaller">{items}</ol></div>')


def prepare_report_html(path: str | os.PathLike) -> str:
    """HTML table of a prepared dataset's ``report.json`` counts (seen, written, skipped by reason)."""
    data = json.loads((Path(path) / "report.json").read_text())
    counts = data["counts"]
    rows = [{"what": "seen", "count": counts["seen"]}, {"what": "written", "count": counts["written"]}]
    rows += [{"what": f"skipped: {k}", "count": v} for k, v in sorted(counts["skipped_by_reason"].items())]
    return table_html(rows)


# ---------------------------------------------------------------------------------------------
#  Cost
# ---------------------------------------------------------------------------------------------

def run_cost(summaries: list[dict], latent_downsample: int = 1, mfu: float | None = None, gpus: int = 8) -> dict:
    """What the run cost here and what it would cost on H100s (``workbench.eval.cost``).

    Per stage: training FLOPs (3 x ``MicroDiT.flops`` per step), the FLOP/s measured on this
    machine (from the logged img/s), and the H100 projection at ``mfu`` (default: the paper-implied MFU).
    """
    from .eval.cost import measured_throughput, project, stage_plan
    from .train import Stage

    plans = [stage_plan(Stage.from_yaml(Path(s["stage_dir"]) / "stage.yaml"), latent_downsample) for s in summaries]
    projection = project(plans, mfu=mfu, gpus=gpus)
    for row, s, plan in zip(projection["rows"], summaries, plans):
        row["measured_gflop_per_s"] = (measured_throughput(plan, s["img_per_s"]) / 1e9 if s.get("img_per_s")
                                       else None)
        row["measured_seconds"] = s.get("train_seconds")
    return projection


COST_COLUMNS = ["name", "preset", "latent_side", "mask_ratio", "steps", "global_batch", "flops_per_step", "flops",
                "measured_gflop_per_s", "measured_seconds", "gpu_hours", "dollars"]
COST_HEADERS = {"name": "stage", "preset": "model", "latent_side": "latent", "mask_ratio": "mask",
                "global_batch": "batch", "flops_per_step": "FLOP/step", "flops": "FLOP",
                "measured_gflop_per_s": "GFLOP/s here", "measured_seconds": "s here", "gpu_hours": "H100-h",
                "dollars": "USD"}


def si(value: float) -> str:
    """A large count with an SI prefix: 4.57e17 -> "457 P"."""
    for power, prefix in ((24, "Y"), (21, "Z"), (18, "E"), (15, "P"), (12, "T"), (9, "G"), (6, "M"), (3, "k")):
        if abs(value) >= 10 ** power:
            return f"{value / 10 ** power:.3g} {prefix}"
    return f"{value:.3g}"


def cost_html(projection: dict, columns: list[str] | None = None) -> str:
    """HTML: the per-stage cost table, the total and the assumptions."""
    from .eval.cost import paper_headline

    rows = projection["rows"] + [{"name": "total", **projection["total"]}]
    paper = paper_headline()
    note = (f"Training FLOPs = 3 × forward FLOPs (MicroDiT.flops) per step. H100 projection at "
            f"{projection['mfu']:.1%} MFU of {projection['peak_flops'] / 1e12:.1f} TFLOP/s bf16 and "
            f"${projection['price']:.2f} per GPU-hour. The paper: ${paper['dollars']:,.0f} = {paper['days']} days × "
            f"{paper['gpus']} H100 = {paper['gpu_hours']:.1f} GPU-hours.")
    note = html.escape(note).replace("$", "&#36;")          # never read as TeX by a notebook's math renderer
    columns = columns or [c for c in COST_COLUMNS if any(c in r for r in rows)]
    return table_html(rows, columns, COST_HEADERS, {"flops_per_step": si, "flops": si, "dollars": "{:,.2f}".format}) + \
        f"<p><small>{note}</small></p>"


# ---------------------------------------------------------------------------------------------
#  report.html
# ---------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd}
table.wb-table{border-collapse:collapse;font-size:.9em}
table.wb-table td,table.wb-table th{border:1px solid #ddd;padding:3px 8px;text-align:right}
table.wb-table th{background:#f4f4f4}figcaption{font-size:.85em;color:#555}
"""


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, *, names=None,
                 notebooks: list[tuple[str, str]] | None = None, steps: list[dict] | None = None,
                 prepared: str | os.PathLike | None = None, latent_downsample: int = 1,
                 title: str | None = None) -> Path:
    """Write a self-contained ``report.html`` for a run (plotly.js inline, images as base64 PNG).

    Args:
        run_dir: ``runs/<name>``.
        out: where to write (default ``<run_dir>/report.html``).
        names: the stage order (default: ``stage_dirs``' order).
        notebooks: ``(label, path)`` of the executed notebooks to link (relative links from ``out``).
        steps: pipeline step records (``{"step", "status", "seconds"}``) for the timing table.
        prepared: the prepared dataset folder, for its counts and a decoded preview.
        latent_downsample: the codec's downsample factor, for the cost model (pixel codec: 1).
    """
    from plotly.offline import get_plotlyjs

    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / REPORT_FILE
    summaries = run_summary(run_dir, names)
    sections = []
    fig = loss_figure(summaries)
    sections.append(("Loss curves", fig.to_html(full_html=False, include_plotlyjs=False, div_id="loss-curves")))
    sections.append(("Samples per stage", samples_html(summaries)))
    sections.append(("Scores", scores_html(summaries) + (failures_html(summaries[-1]) if summaries else "")))
    sections.append(("Metrics", metrics_html(summaries)))
    if summaries:
        sections.append(("Cost estimate", cost_html(run_cost(summaries, latent_downsample))))
    if prepared and (Path(prepared) / "report.json").is_file():
        sections.append(("Prepared data", prepare_report_html(prepared) + prepared_preview_html(prepared, 16)))
    if steps:
        sections.append(("Pipeline steps", table_html(steps, ["step", "status", "seconds", "notebook"])))
    if notebooks:
        links = "".join(f'<li><a href="{html.escape(os.path.relpath(p, out.parent))}">{html.escape(label)}</a></li>'
                        for label, p in notebooks)
        sections.append(("Executed notebooks", f"<ul>{links}</ul>"))
    title = title or f"MicroDiT Workbench run: {run_dir.name}"
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    body = "".join(f"<h2>{html.escape(h)}</h2>\n{content}\n" for h, content in sections)
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style><script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
            f"<h1>{html.escape(title)}</h1><p><small>{html.escape(str(run_dir))} · written {stamp}</small></p>"
            f"{body}</body></html>")
    return atomic_write_text(out, page)
