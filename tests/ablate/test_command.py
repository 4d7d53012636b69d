"""``workbench ablate``: the report redrawn from results.json (table, figures), the exit status, --quick."""

from __future__ import annotations

import json

import pytest

from workbench.ablate.command import format_table
from workbench.ablate.figures import all_figures, curves, svg_figure, write_report
from workbench.cli import build_parser, main


def results(seeds: int = 2, failures=()) -> dict:
    rows = []
    for variant, base in (("a", 0.30), ("b", 0.31), ("c", 0.50)):
        for seed in range(seeds):
            for k, flops in enumerate((1e12, 2e12)):
                loss = base - 0.1 * k + 0.02 * seed
                rows.append({"suite": "s", "variant": variant, "seed": seed, "phase": "main", "step": k + 1,
                             "train_flops": flops,
                             "metrics": {"val_loss": loss, "val_loss_by_sigma": {"0.02": loss * 2, "1": loss / 2},
                                         "shape_accuracy": 0.2 + seed / 10, "colour_accuracy": 0.9,
                                         "fid_proxy": 10.0 + k}})
    return {"suite": "s", "budget": 2e12, "seeds": seeds, "checkpoints": 2, "rows": rows, "failures": list(failures)}


def test_the_cli_redraws_a_report_from_results_json(tmp_path, capsys):
    (tmp_path / "results.json").write_text(json.dumps(results()))
    assert main(["ablate", "--report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    at = lines.index("val_loss (lower is better)")
    assert lines[at + 1].split()[:2] == ["a", "0.2100"] and "within the seeds' spread of b" in lines[at + 1]
    assert lines[at + 3].split()[0] == "c" and "within" not in lines[at + 3]
    assert "shape_accuracy (higher is better)" in out
    svg = (tmp_path / "val_loss.svg").read_text()
    assert svg.startswith("<svg") and svg.count("<polyline") == 3
    assert svg.count("<circle") == sum(map(len, curves(results(), "val_loss").values()))    # a marker per point
    html = (tmp_path / "figures.html").read_text()
    assert len(html) > 1_000_000 and 'src="https://cdn.plot.ly' not in html   # plotly.js inline: opens offline
    assert html.count("Plotly.newPlot") == 5                          # 4 metrics and the held-out loss per sigma


def test_figures_draw_the_seed_mean_and_band_per_variant():
    data = curves(results(), "val_loss")
    assert data["a"] == [(1e12, pytest.approx(0.31), pytest.approx(0.30), pytest.approx(0.32)),
                         (2e12, pytest.approx(0.21), pytest.approx(0.20), pytest.approx(0.22))]
    figures = all_figures(results())
    assert len(figures) == 5 and figures[0].layout.xaxis.title.text == "training TFLOP"
    assert [t.name for t in figures[0].data if t.showlegend is not False] == ["a", "b", "c"]
    sigma = figures[-1]
    assert [t.name for t in sigma.data] == ["a", "b", "c"] and list(sigma.data[0].x) == [0.02, 1.0]
    assert "no fid_proxy" not in svg_figure(results(), "fid_proxy")
    import xml.dom.minidom

    odd = {**results(), "suite": "a&b", "rows": [{**r, "variant": "x<y"} for r in results()["rows"]]}
    xml.dom.minidom.parseString(svg_figure(odd))                       # names are escaped: the SVG still parses
    assert all_figures(None) == []


def test_a_failed_run_is_in_the_table_and_the_exit_status(tmp_path, capsys):
    failed = results(failures=[{"variant": "d", "seed": 1, "error": "RuntimeError: boom"}])
    (tmp_path / "results.json").write_text(json.dumps(failed))
    assert main(["ablate", "--report", str(tmp_path)]) == 1
    assert "FAILED d seed 1: RuntimeError: boom" in capsys.readouterr().out
    assert "one seed: no spread" in format_table(results(seeds=1))
    paths = write_report(failed, tmp_path / "again")
    assert {p.name for p in paths} >= {"figures.html", "val_loss.svg", "fid_proxy.svg"}


def test_the_command_line_needs_a_suite_or_a_report(tmp_path, capsys):
    assert main(["ablate"]) == 2
    assert "--suite masking|moe|recipe|FILE.yaml" in capsys.readouterr().err
    assert main(["ablate", "--suite", str(tmp_path / "none.yaml")]) == 2
    assert "no suite" in capsys.readouterr().err
    args = build_parser().parse_args(["ablate", "--suite", "moe", "--quick", "--budget", "1e11"])
    assert args.quick and args.budget == 1e11 and args.seeds == 2 and args.checkpoints == 4


def test_variants_selects_part_of_a_suite_and_an_unknown_one_lists_the_known(capsys):
    args = build_parser().parse_args(["ablate", "--suite", "optim", "--variants", "base", "rope"])
    assert args.variants == ["base", "rope"]
    assert main(["ablate", "--suite", "optim", "--variants", "base", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no variant 'nope'" in err and "rope" in err


def test_several_reports_merge_into_one_comparison_at_the_common_budget(tmp_path, capsys):
    longer = results()
    longer["budget"] = 4e12
    longer["rows"] = [{**r, "variant": "a" if r["variant"] == "a" else "d"} for r in longer["rows"]]
    longer["rows"] += [{**r, "train_flops": 4e12, "metrics": {**r["metrics"], "val_loss": 0.01}}
                       for r in longer["rows"] if r["train_flops"] == 2e12]
    for name, res in (("first", results()), ("second", longer)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(res))
    out = tmp_path / "both"
    assert main(["ablate", "--report", str(tmp_path / "first"), str(tmp_path / "second"), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("first + second at 2e+12 training FLOPs")
    table = lines[lines.index("val_loss (lower is better)") + 1:lines.index("shape_accuracy (higher is better)")]
    names = [line.split()[0] for line in table]
    assert sorted(names) == ["b", "c", "d", "first/a", "second/a"]      # the shared name is told apart by folder
    second_a = next(line for line in table if line.split()[0] == "second/a")
    assert second_a.split()[1] == "0.2100"                # compared at 2e12, not at the longer run's 4e12 point (0.01)
    merged = json.loads((out / "results.json").read_text())
    assert (out / "val_loss.svg").read_text().count("<polyline") == 5
    assert max(r["train_flops"] for r in merged["rows"] if r["variant"] == "second/a") == 4e12   # curves keep it
    assert main(["ablate", "--report", str(out)]) == 0                 # the merged folder redraws like any other
    assert main(["ablate", "--report", str(tmp_path / "first"), str(tmp_path / "second")]) == 2
    assert "add --out DIR" in capsys.readouterr().err
