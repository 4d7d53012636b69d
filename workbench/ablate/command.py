"""The ``workbench ablate`` subcommand (its parser and what it runs)."""

from __future__ import annotations

import json
import shlex
import sys
from importlib import resources
from pathlib import Path
from ..errors import InputError


def add_parser(sub) -> None:
    """Add ``workbench ablate`` to the CLI's subparsers."""
    ab = sub.add_parser("ablate", help="compare recipes at equal training FLOPs over seeds: held-out loss, shape and "
                                       "colour accuracy, FID-proxy (docs/ablations.md)")
    built_in = sorted(entry.name.removesuffix(".yaml") for entry in resources.files(__package__).joinpath("suites")
                      .iterdir() if entry.name.endswith(".yaml"))      # suite.BUILT_IN, without importing torch
    ab.add_argument("--suite", default=None, help=f"{' | '.join(built_in)} | a suite YAML file")
    ab.add_argument("--variants", nargs="+", default=None, metavar="NAME",
                    help="run only these variants of the suite (default: all), e.g. --variants base rope")
    ab.add_argument("--budget", type=float, default=20e12, help="training FLOPs of every run (default 20e12)")
    ab.add_argument("--seeds", type=int, default=2, help="seeds per variant (default 2)")
    ab.add_argument("--checkpoints", type=int, default=4, help="evaluations per run at k/N of the budget (default 4)")
    ab.add_argument("--out", default=None, help="output folder (default runs/ablate/<suite>); a rerun resumes")
    ab.add_argument("--jobs", type=int, default=1, help="runs trained at once, each in its own process with 1/N of "
                                                       "the cores (default 1; on a 2-core machine --jobs 2)")
    ab.add_argument("--report", nargs="+", default=None, metavar="DIR",
                    help="only redraw the figures and table of DIR; of several (folders or committed results, "
                         "e.g. scale-60T) together into --out: one curve per variant, the table at the smallest budget")
    ab.add_argument("--quick", action="store_true", help="the suite's smoke-test form: a small model, 96 scenes, "
                                                          "a 2-step protocol (Suite.quick; use a tiny --budget)")
    ab.add_argument("--json", action="store_true", help="print results.json instead of the table")
    ab.add_argument("--no-progress", action="store_true")
    ab.set_defaults(fn=run)


def run(args) -> int:
    """Run (or resume) a suite, or redraw a finished one's report; print the final-budget table.

    Exit status 0, or 1 when a run failed (the others' results are written all the same)."""
    from .figures import write_report
    from .runner import run_suite

    if args.report:
        results, out = report_results(args.report, args.out)
    else:
        if not args.suite:
            raise InputError("workbench ablate: give --suite masking|moe|recipe|FILE.yaml (or --report DIR)")
        from .suite import Suite

        suite = Suite.load(args.suite)
        suite = suite.only(*args.variants) if args.variants else suite
        suite = suite.quick() if args.quick else suite
        out = Path(args.out or f"runs/ablate/{suite.name}{'-quick' if args.quick else ''}")
        command = "workbench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        results = run_suite(suite, args.budget, args.seeds, args.checkpoints, out, progress=not args.no_progress,
                            command=command, jobs=args.jobs)
    paths = write_report(results, out)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(format_table(results))
        print("figures: " + ", ".join(str(p) for p in paths))
    return 1 if results["failures"] else 0          # every finished run is kept; a rerun retries the failed


def report_results(folders: list[str], out: str | None) -> tuple[dict, Path]:
    """What ``--report`` draws and where: one folder's results in place, or several merged into ``out`` (its
    ``results.json`` written too, so ``--report OUT`` redraws it)."""
    from ..io import atomic_write_json
    from .runner import load_results, merge_results

    if len(folders) == 1:
        return json.loads((Path(folders[0]) / "results.json").read_text()), Path(folders[0])
    if not out:
        raise InputError(f"workbench ablate --report {' '.join(folders)}: several results are drawn together into "
                         f"a new folder; add --out DIR")
    names = [Path(f).name or f for f in folders]
    if len(set(names)) < len(names):
        raise InputError(f"workbench ablate --report: the folders' names must differ (they name the variants "
                         f"they share), got {' '.join(names)}")
    merged = merge_results({name: load_results(f) for name, f in zip(names, folders)})
    atomic_write_json(Path(out) / "results.json", merged)
    return merged, Path(out)


def format_table(results: dict) -> str:
    """The final-budget table: per metric and variant, the mean [min, max] over seeds, best first, and which
    variants it cannot be told apart from (their seeds' ranges overlap)."""
    from .figures import HIGHER_IS_BETTER, METRICS
    from .runner import summary_table

    seeds = results["seeds"]
    lines = [f"{results['suite']} at {results['budget']:.3g} training FLOPs per run, {seeds} seed(s) per variant: "
             f"mean [min, max] over seeds at the final budget"
             + ("" if seeds > 1 else " (one seed: no spread, so no difference below is resolved)")]
    for metric in METRICS:
        table = summary_table(results, metric)
        if not table:
            continue
        better = "higher" if metric in HIGHER_IS_BETTER else "lower"
        lines.append(f"{metric} ({better} is better)")
        for row in (table[::-1] if metric in HIGHER_IS_BETTER else table):
            close = f"  within the seeds' spread of {', '.join(row['within_spread_of'])}" if row["within_spread_of"] \
                else ""
            lines.append(f"  {row['variant']:<20} {row['mean']:.4f} [{row['min']:.4f}, {row['max']:.4f}]{close}")
    for failure in results.get("failures", []):
        lines.append(f"FAILED {failure['variant']} seed {failure['seed']}: {failure['error']}")
    return "\n".join(lines)
