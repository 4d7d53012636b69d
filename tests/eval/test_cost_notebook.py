"""Notebook 05 on the paper's recipe with its parameters changed: the figures, the hardware table, the record."""

from __future__ import annotations

import re

import pytest

from tests.notebooks.test_notebooks import execute, html_outputs, workspace  # noqa: F401 (a fixture)
from workbench.cost_report import hardware_rows
from workbench.eval.cost import GPUS, PAPER_STAGES, paper_implied_mfu, project

PLOTLY = "application/vnd.plotly.v1+json"


@pytest.mark.slow
def test_05_projects_configs_paper_on_l40s_and_draws_cost_against_mfu_and_per_stage(workspace):  # noqa: F811
    nb, result = execute("05_cost_model.ipynb", workspace / "out05_l40s", stages="configs/paper", gpu="l40s",
                         mfu=0.45, price=1.0, gpus=16)
    expected = project(PAPER_STAGES, mfu=0.45, price=1.0, gpus=16, gpu="l40s")["total"]
    assert result["mine_gpu"] == "l40s" and result["mine_stages"] == ["stage1", "stage2", "stage3", "stage4"]
    assert result["mine_dollars"] == pytest.approx(expected["dollars"]) == pytest.approx(expected["gpu_hours"])
    assert result["comparison"] == {"MicroDiT_XL_2": 1890.0, "Stable Diffusion": 223_020.0, "PixArt-alpha": 28_400.0}
    rows = hardware_rows(PAPER_STAGES, mfus=(0.18, 0.45), gpus=16)
    assert [(r["gpu"], r["mfu"]) for r in result["hardware"]] == [(g, m) for g in GPUS for m in (0.18, 0.45)]
    assert [r["dollars"] for r in result["hardware"]] == pytest.approx([r["dollars"] for r in rows])

    figures = [o["data"][PLOTLY] for c in nb.cells for o in c.get("outputs", []) if PLOTLY in o.get("data", {})]
    assert len(figures) == 2
    mfu_curve, per_stage = figures
    assert [t["name"].split()[0] for t in mfu_curve["data"] if t["mode"] == "lines"] == list(GPUS)
    assert mfu_curve["layout"]["shapes"][0]["x0"] == pytest.approx(paper_implied_mfu())
    assert [t["name"].split(":")[0] for t in per_stage["data"]] == list(GPUS)
    l40s = project(PAPER_STAGES, mfu=0.45, gpus=16, gpu="l40s")["rows"]          # at its assumed price
    assert per_stage["data"][3]["y"] == pytest.approx([r["dollars"] for r in l40s])
    names = [t["name"] for f in figures for t in f["data"]]
    assert not any("$" in n for n in names)

    page = html_outputs(nb)
    assert "&#36;28,400" in page and "15.03x" in page and not re.search(r"\$\d", page)
    assert "NVIDIA L40S 48GB" in page and "362.05" in page
