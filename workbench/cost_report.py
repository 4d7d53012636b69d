"""The cost model as a user meets it: recipes read from YAML files, tables, dollars and figures.

``workbench.eval.cost`` owns the arithmetic (FLOPs, GPU-hours, dollars, the paper's figures); this module,
above the pipeline in the layers, reads a recipe from a pipeline or stage YAML and presents projections
(notebook 05, ``workbench cost``)::

    from workbench.cost_report import recipe_plans, projection_text
    print(projection_text(project(recipe_plans("configs/paper"), gpu="h100", mfu=0.45)))
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path

from .eval.cost import (GPUS, PAPER_DOLLARS, PAPER_STAGES, StagePlan, get_gpu, gpu_hours, paper_comparison,
                        paper_implied_mfu, project, stage_plan, stage_plans)
from .errors import InputError, MissingFileError


def recipe_plans(spec: str | os.PathLike = "paper", latent_downsample: int | None = None) -> list[StagePlan]:
    """The stages of a recipe, whatever form it takes.

    ``spec`` is ``"paper"`` (``PAPER_STAGES``), a pipeline YAML (its ``stages`` with its ``overrides``,
    ``stage_overrides`` and ``latent_downsample``), a shipped pipeline's name (``demo``), a stage YAML,
    a folder (its ``pipeline.yaml``, else its ``*.yaml`` in name order, as ``configs/paper``), or a
    comma-separated list of these. ``latent_downsample`` (the codec's factor) overrides the pipeline's;
    ``None`` for a stage YAML infers it from the model's ``sample_size`` (:func:`inferred_downsample`).

    Example::

        recipe_plans("configs/paper") == list(PAPER_STAGES)      # the same FLOPs, from the YAMLs
        recipe_plans("configs/demo/pipeline.yaml")                # 4 demo stages, pixel codec
    """
    parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    if not parts:
        raise InputError("recipe: empty; give 'paper', a pipeline YAML, stage YAMLs or a folder of them")
    return [plan for part in parts for plan in _recipe_part(part, latent_downsample)]


def _recipe_part(spec: str, latent_downsample: int | None) -> list[StagePlan]:
    """:func:`recipe_plans` of one item."""
    from .pipeline.config import resolve_config_path

    if spec == "paper":
        return list(PAPER_STAGES)
    path = Path(spec)
    if path.is_dir():
        pipeline = path / "pipeline.yaml"
        yamls = [pipeline] if pipeline.is_file() else sorted(path.glob("*.yaml"))
        if not yamls:
            raise InputError(f"recipe: folder {spec!r} holds no pipeline.yaml and no stage YAMLs")
        return [plan for p in yamls for plan in _recipe_part(str(p), latent_downsample)]
    if not path.is_file():
        try:                                      # a shipped pipeline's name ("demo") or a shipped YAML's path
            path = resolve_config_path(spec)
        except MissingFileError:
            raise MissingFileError(f"recipe: {spec!r} not found in the working folder or the shipped configs (a "
                                   f"pipeline or stage YAML, a folder, or 'paper')") from None
    if _is_pipeline_yaml(path):
        return _pipeline_plans(path, latent_downsample)
    return stage_plans([str(path)], latent_downsample)


def _is_pipeline_yaml(path: Path) -> bool:
    """A pipeline YAML lists ``stages``; a stage YAML does not."""
    from .config import read_yaml_mapping

    return "stages" in read_yaml_mapping(path, "settings")


def _pipeline_plans(path: Path, latent_downsample: int | None) -> list[StagePlan]:
    """The stages of a pipeline YAML as it would train them (its overrides applied)."""
    from .pipeline.config import PipelineConfig
    from .pipeline.plan import build_stage
    from .train import Stage

    config = PipelineConfig.from_yaml(path)
    down = latent_downsample or config.latent_downsample
    plans = []
    for index, yaml_path in enumerate(config.stages):
        own = config.stage_overrides.get(Stage.from_yaml(yaml_path).name, {})
        plans.append(stage_plan(build_stage(yaml_path, index, config.overrides, own, {}), down))
    return plans


# ---------------------------------------------------------------------------------------------
#  Projection
# ---------------------------------------------------------------------------------------------


def format_dollars(value: float | None) -> str:
    """Dollars with the digits that matter: $1,890 / $12.35 / $0.03 / $0.000421 (never a bare 0.00).

    Example::

        format_dollars(1890.4), format_dollars(0.5), format_dollars(0.0312)    # ('$1,890', '$0.50', '$0.0312')
    """
    if value is None:
        return "–"
    if value == 0:
        return "$0"
    sign, value = ("-" if value < 0 else ""), abs(value)
    if value >= 100:
        return f"{sign}${value:,.0f}"
    if value >= 1:
        return f"{sign}${value:,.2f}"
    whole, fraction = f"{value:.{max(2, 2 - math.floor(math.log10(value)))}f}".split(".")   # 3 significant digits
    return f"{sign}${whole}.{fraction.rstrip('0').ljust(2, '0')}"


def usd(value: float | None) -> str:
    """:func:`format_dollars` without the ``$`` sign, for figures: ``1,890 USD``."""
    return f"{format_dollars(value).replace('$', '')} USD"


def no_tex(text: str, markdown: bool = False) -> str:
    """``text`` that a notebook's MathJax never reads as TeX: Markdown gets ``\\$``; HTML gets ``&#36;`` inside a
    ``mathjax_ignore`` block (JupyterLab typesets the rendered DOM, where an entity is a ``$`` again)."""
    if markdown:
        return text.replace("$", "\\$")
    return f'<div class="tex2jax_ignore mathjax_ignore">{text.replace("$", "&#36;")}</div>'


def _number(value: float, digits: int = 4) -> str:
    """A float to ``digits`` significant digits with thousands separators (12,345 / 62.40 / 0.1849 / 3.799e-05)."""
    if value == 0 or abs(value) >= 10 ** digits:
        return f"{value:,.0f}"
    if abs(value) < 1e-3:
        return f"{value:.{digits - 1}e}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:,.{decimals}f}"


PROJECTION_COLUMNS = (("name", "stage"), ("preset", "model"), ("latent_side", "latent"), ("mask_ratio", "mask"),
                      ("steps", "steps"), ("global_batch", "batch"), ("flops", "FLOP"), ("gpu_hours", "GPU-h"),
                      ("wall_days", "days"), ("dollars", "USD"))


def projection_rows(projection: dict) -> list[dict]:
    """The per-stage rows and the total of a :func:`project` result as display strings (header -> text)."""
    formats = {"flops": si, "gpu_hours": _number, "wall_days": _number, "dollars": format_dollars,
               "steps": "{:,}".format, "mask_ratio": "{:g}".format}
    rows = projection["rows"] + [{"name": "total", **projection["total"]}]
    return [{header: (formats[key](row[key]) if key in formats else str(row[key])) if key in row else ""
             for key, header in PROJECTION_COLUMNS} for row in rows]


def projection_summary(projection: dict) -> str:
    """One line: the hardware, MFU and price a projection assumes, and its total."""
    total = projection["total"]
    return (f"{projection['gpus']} x {projection['gpu_label']} ({projection['peak_flops'] / 1e12:,.1f} TFLOP/s dense "
            f"bf16) at {projection['mfu']:.1%} MFU and {format_dollars(projection['price'])} per GPU-hour: "
            f"{si(total['flops'])}FLOP, {_number(total['gpu_hours'])} GPU-hours, {_number(total['wall_days'])} days, "
            f"{format_dollars(total['dollars'])}")


def si(value: float) -> str:
    """``workbench.report.si`` (4.57e17 -> "457 P")."""
    from .report import si as report_si

    return report_si(value)


def projection_text(projection: dict) -> str:
    """A :func:`project` result as a plain-text table (what ``workbench cost`` prints) and a summary line."""
    rows = projection_rows(projection)
    headers = list(rows[0])
    widths = {h: max(len(h), *(len(r[h]) for r in rows)) for h in headers}
    left = {"stage", "model"}

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(widths[h]) if h in left else c.rjust(widths[h]) for h, c in zip(headers, cells))

    body = [line(headers)] + [line([r[h] for h in headers]) for r in rows]
    return "\n".join(body + ["", projection_summary(projection)])


def projection_html(projection: dict) -> str:
    """A :func:`project` result as an HTML table with its assumptions; every ``$`` escaped (no TeX)."""
    from .report import table_html

    gpu = get_gpu(projection["gpu"])
    note = (f"{projection_summary(projection)}. Training FLOPs = 3 x forward FLOPs (MicroDiT.flops) per step. "
            f"Peak: {gpu.peak_source}. Price: {gpu.price_note if projection['price'] == gpu.price else 'as given'}.")
    return no_tex(table_html(projection_rows(projection)) + f"<p><small>{html.escape(note)}</small></p>")


def comparison_rows() -> list[dict]:
    """:func:`paper_comparison` as display strings (header -> text)."""
    def count(n, unit):
        return "–" if n is None else f"{n / unit:.4g}"

    return [{"model": r.model, "params (B)": count(r.params, 1e9), "images (M)": count(r.train_images, 1e6),
             "GPU-hours": "–" if r.gpu_hours is None else f"{r.gpu_hours:,.1f} {r.gpu}",
             "cost as stated": format_dollars(r.dollars),
             "cost implied": "–" if r.dollars is not None or r.cheaper_by is None
             else f"{format_dollars(r.dollars_estimate())} ({r.cheaper_by:g} x {format_dollars(PAPER_DOLLARS)})",
             "MicroDiT cheaper by (claimed)": "–" if r.cheaper_by is None else f"{r.cheaper_by:g}x",
             "by the dollars": "–" if r.cheaper_by is None or r.dollars is None else f"{r.ratio_from_dollars():.2f}x",
             "FID-30K": "–" if r.fid is None else f"{r.fid:g}", "source": r.source} for r in paper_comparison()]


def comparison_html() -> str:
    """The paper's cost comparison as an HTML table; every ``$`` escaped (no TeX)."""
    from .report import table_html

    return no_tex(table_html(comparison_rows()))


def gpus_html() -> str:
    """The known GPU kinds as an HTML table: peak, memory, assumed price and where each figure comes from."""
    from .report import table_html

    rows = [{"gpu": g.name, "model": g.label, "dense bf16 TFLOP/s": f"{g.bf16_flops / 1e12:,.2f}",
             "memory (GB)": str(g.memory_gb), "USD per GPU-hour": format_dollars(g.price), "peak from": g.peak_source,
             "price": g.price_note} for g in GPUS.values()]
    return no_tex(table_html(rows))


def hardware_rows(stages, mfus=(0.18, 0.45), gpus: int = 8) -> list[dict]:
    """The total of ``stages`` on every GPU kind (assumed prices) at each of ``mfus``: one row per (GPU, MFU).

    Example::

        hardware_rows(PAPER_STAGES)[0]    # {'gpu': 'a100', 'mfu': 0.18, 'gpu_hours': ..., 'dollars': ...}
    """
    stages = list(stages)
    rows = []
    for name in GPUS:
        for mfu in mfus:
            total = project(stages, mfu=mfu, gpus=gpus, gpu=name)["total"]
            rows.append({"gpu": name, "mfu": float(mfu), "gpus": gpus, "gpu_hours": total["gpu_hours"],
                         "wall_days": total["wall_days"], "dollars": total["dollars"]})
    return rows


def hardware_html(stages, mfus=(0.18, 0.45), gpus: int = 8) -> str:
    """:func:`hardware_rows` as an HTML table; every ``$`` escaped (no TeX)."""
    from .report import table_html

    rows = [{"gpu": r["gpu"], "MFU": f"{r['mfu']:.1%}", "GPU-hours": _number(r["gpu_hours"]),
             f"days on {gpus}": _number(r["wall_days"]), "USD": format_dollars(r["dollars"])}
            for r in hardware_rows(stages, mfus, gpus)]
    return no_tex(table_html(rows))


def cost_vs_mfu_figure(stages, mfus=None, kinds=None, height: int = 420):
    """Plotly figure: the total cost of ``stages`` against the MFU, one line per GPU kind (assumed prices),
    log-log, with the paper-implied MFU and the paper's $1,890 marked. Labels say USD, never ``$``.

    Example::

        cost_vs_mfu_figure(PAPER_STAGES)           # the last expression of a notebook cell shows it
    """
    import plotly.graph_objects as go

    stages = list(stages)
    flops = sum(plan.total_flops() for plan in stages)
    mfus = list(mfus) if mfus is not None else [round(0.05 + 0.01 * i, 2) for i in range(96)]
    fig = go.Figure()
    for name in kinds or GPUS:
        gpu = get_gpu(name)
        dollars = [gpu_hours(flops, m, gpu.bf16_flops) * gpu.price for m in mfus]
        fig.add_scatter(x=mfus, y=dollars, mode="lines", name=f"{gpu.name} at {usd(gpu.price)}/h",
                        hovertemplate="MFU %{x:.0%}: USD %{y:,.2f}<extra>" + gpu.name + "</extra>")
    implied = paper_implied_mfu()
    fig.add_vline(x=implied, line_dash="dash", line_color="grey",
                  annotation_text=f"paper-implied MFU {implied:.1%}", annotation_position="top right")
    fig.add_scatter(x=[implied], y=[PAPER_DOLLARS], mode="markers", marker=dict(size=10, symbol="star"),
                    name=f"the paper: {usd(PAPER_DOLLARS)} on 8 H100")
    fig.update_xaxes(title_text="MFU (model FLOPs utilisation)", type="log", tickformat=".0%")
    fig.update_yaxes(title_text="training cost, USD (any GPU count)", type="log")
    fig.update_layout(height=height, template="plotly_white", margin=dict(l=60, r=20, t=30, b=50))
    return fig


def stage_cost_figure(stages, mfu: float | None = None, gpus: int = 8, kinds=None, height: int = 380):
    """Plotly figure: the cost of each stage, grouped bars per GPU kind (assumed prices) at one MFU.

    Example::

        stage_cost_figure(recipe_plans("configs/paper"), mfu=0.45)
    """
    import plotly.graph_objects as go

    stages = list(stages)
    fig = go.Figure()
    for name in kinds or GPUS:
        projection = project(stages, mfu=mfu, gpus=gpus, gpu=name)
        fig.add_bar(x=[r["name"] for r in projection["rows"]], y=[r["dollars"] for r in projection["rows"]],
                    name=f"{name}: {usd(projection['total']['dollars'])} in all",
                    hovertemplate="%{x}: USD %{y:,.2f}<extra>" + name + "</extra>")
    fig.update_layout(barmode="group", height=height, template="plotly_white", margin=dict(l=60, r=20, t=40, b=40),
                      title=dict(text=f"cost per stage at {(mfu or paper_implied_mfu()):.1%} MFU"))
    fig.update_yaxes(title_text="USD")
    return fig
