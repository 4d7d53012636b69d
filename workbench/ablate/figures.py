"""Figures of an ablation: each metric against training FLOPs, one line per variant (mean over seeds), the
seeds' range as a band. A plotly figure for notebooks and HTML, and a dependency-free SVG for docs::

    fig = ablation_figure(results, "val_loss"); fig.show()
    write_report(results, "runs/ablate/masking")     # figures.html, <metric>.svg (and .png with kaleido)
"""

from __future__ import annotations

import warnings
from html import escape
from pathlib import Path

import numpy as np

from ..io import atomic_write_text

METRICS = ("val_loss", "shape_probe", "shape_gap", "shape_accuracy", "colour_accuracy", "fid_proxy")
HIGHER_IS_BETTER = ("shape_probe", "shape_gap", "shape_accuracy", "colour_accuracy")
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def curves(results: dict, metric: str, variants: tuple[str, ...] | None = None
           ) -> dict[str, list[tuple[float, float, float, float]]]:
    """``{variant: [(flops, mean, min, max), ...]}`` over seeds at each evaluation point (only ``variants``
    when given)."""
    points: dict = {}
    for row in results["rows"]:
        if variants and row["variant"] not in variants:
            continue
        value = row["metrics"].get(metric)
        if value is not None:
            points.setdefault(row["variant"], {}).setdefault(round(row["train_flops"], -9), []).append(value)
    return {v: [(f, float(np.mean(vals)), float(min(vals)), float(max(vals))) for f, vals in sorted(by.items())]
            for v, by in points.items()}


def ablation_figure(results: dict, metric: str = "val_loss", variants: tuple[str, ...] | None = None):
    """A plotly figure of ``metric`` against training FLOPs: a line per variant (only ``variants`` when given),
    the seeds' range as a band."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, (variant, pts) in enumerate(curves(results, metric, variants).items()):
        colour = COLOURS[i % len(COLOURS)]
        x = [p[0] / 1e12 for p in pts]
        fig.add_trace(go.Scatter(x=x + x[::-1], y=[p[3] for p in pts] + [p[2] for p in pts][::-1], fill="toself",
                                 fillcolor=colour, opacity=0.2, line={"width": 0}, hoverinfo="skip",
                                 showlegend=False))
        fig.add_trace(go.Scatter(x=x, y=[p[1] for p in pts], mode="lines+markers", name=variant,
                                 line={"color": colour}))
    fig.update_layout(title=f"{results['suite']}: {metric} at equal training compute (band: seeds' range)",
                      xaxis_title="training TFLOP", yaxis_title=metric, template="plotly_white", height=420)
    return fig


def sigma_figure(results: dict):
    """The held-out loss at the final budget against σ (log axes), a line per variant (mean over seeds)."""
    import plotly.graph_objects as go

    final = {}
    for row in results["rows"]:
        key = (row["variant"], row["seed"])
        if key not in final or row["train_flops"] > final[key]["train_flops"]:
            final[key] = row
    fig = go.Figure()
    for i, variant in enumerate(dict.fromkeys(v for v, _ in final)):
        by = [r["metrics"].get("val_loss_by_sigma") or {} for (v, _), r in final.items() if v == variant]
        sigmas = sorted({float(s) for b in by for s in b})
        means = [float(np.mean([b[k] for b in by for k in b if float(k) == s])) for s in sigmas]
        fig.add_trace(go.Scatter(x=sigmas, y=means, mode="lines+markers", name=variant,
                                 line={"color": COLOURS[i % len(COLOURS)]}))
    fig.update_layout(title=f"{results['suite']}: held-out loss per σ at the final budget (mean over seeds)",
                      xaxis_title="σ", yaxis_title="val_loss", xaxis_type="log", yaxis_type="log",
                      template="plotly_white", height=420)
    return fig


def measured_metrics(results: dict) -> tuple[str, ...]:
    """The metrics of ``METRICS`` that some row has a value for (results written before a metric existed lack it)."""
    return tuple(m for m in METRICS if any(row["metrics"].get(m) is not None for row in results["rows"]))


def all_figures(results: dict | None) -> list:
    """``ablation_figure`` of every measured metric, then ``sigma_figure`` (none without results)."""
    if not results:
        return []
    return [ablation_figure(results, metric) for metric in measured_metrics(results)] + [sigma_figure(results)]


def svg_figure(results: dict, metric: str = "val_loss", width: int = 640, height: int = 380) -> str:
    """The same figure as a small standalone SVG (no plotting package needed)."""
    data = curves(results, metric)
    pts = [p for series in data.values() for p in series]
    if not pts:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="60">'
                f'<text x="10" y="30">no {metric}</text></svg>')
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[2] for p in pts), max(p[3] for p in pts)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1e-6)
    left, right, top, bottom = 60, 170, 30, 40

    def sx(f):
        return left + (f - x0) / (x1 - x0) * (width - left - right)

    def sy(v):
        return height - bottom - (v - y0) / (y1 - y0) * (height - top - bottom)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             f'font-size="11"><rect width="100%" height="100%" fill="white"/>',
             f'<text x="{left}" y="18" font-size="13">{escape(str(results["suite"]))}: {metric} vs training TFLOP '
             f'(band: seeds\' range)</text>',
             f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="black"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="black"/>']
    for k in range(5):
        f, v = x0 + (x1 - x0) * k / 4, y0 + (y1 - y0) * k / 4
        parts.append(f'<text x="{sx(f):.0f}" y="{height - bottom + 15}" text-anchor="middle">{f / 1e12:.1f}</text>')
        parts.append(f'<text x="{left - 5}" y="{sy(v) + 4:.0f}" text-anchor="end">{v:.3g}</text>')
    for i, (variant, series) in enumerate(data.items()):
        colour = COLOURS[i % len(COLOURS)]
        band = [(sx(p[0]), sy(p[3])) for p in series] + [(sx(p[0]), sy(p[2])) for p in series][::-1]
        parts.append(f'<polygon points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in band)}" fill="{colour}" '
                     f'fill-opacity="0.18"/>')
        line = " ".join(f"{sx(p[0]):.1f},{sy(p[1]):.1f}" for p in series)
        parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2"/>')
        parts += [f'<circle cx="{sx(p[0]):.1f}" cy="{sy(p[1]):.1f}" r="3" fill="{colour}"/>' for p in series]
        parts.append(f'<text x="{width - right + 10}" y="{top + 16 * i + 10}" fill="{colour}">{escape(variant)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def write_report(results: dict, folder: str | Path) -> list[Path]:
    """``figures.html`` (plotly, every metric, plotly.js inline so it opens offline), one SVG per metric, and
    one PNG per metric where plotly's static export (kaleido) works here; returns the paths written."""
    folder, metrics = Path(folder), measured_metrics(results)
    figures = all_figures(results)
    html = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures)]
    paths = [atomic_write_text(folder / "figures.html", "<html><head><meta charset='utf-8'></head><body>" +
                               "\n".join(html) + "</body></html>")]
    for metric in metrics:
        paths.append(atomic_write_text(folder / f"{metric}.svg", svg_figure(results, metric)))
    try:
        import kaleido  # noqa: F401  (optional: plotly's static image export)
    except ImportError:
        return paths
    for metric, fig in zip(metrics, figures):
        try:
            fig.write_image(folder / f"{metric}.png", width=800, height=420)
        except Exception as err:  # noqa: BLE001 - kaleido without its browser: the SVGs stand in
            warnings.warn(f"no PNG figures ({type(err).__name__}: {err}); the SVGs have the same content", stacklevel=2)
            break
        paths.append(folder / f"{metric}.png")
    return paths
