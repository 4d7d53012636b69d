"""The ``workbench ablate`` subcommand (its parser and what it runs)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path


def add_parser(sub) -> None:
    """Add ``workbench ablate`` to the CLI's subparsers."""
    ab = sub.add_parser("ablate", help="compare recipes at equal training FLOPs over seeds: held-out loss, shape and "
                                       "colour accuracy, FID-proxy (docs/ablations.md)")
    ab.add_argument("--suite", default=None, help="masking | moe | recipe | a suite YAML file")
    ab.add_argument("--budget", type=float, default=20e12, help="training FLOPs of every run (default 20e12)")
    ab.add_argument("--seeds", type=int, default=2, help="seeds per variant (default 2)")
    ab.add_argument("--checkpoints", type=int, default=4, help="evaluations per run at k/N of the budget (default 4)")
    ab.add_argument("--out", default=None, help="output folder (default runs/ablate/<suite>); a rerun resumes")
    ab.add_argument("--report", default=None, metavar="DIR", help="only redraw the figures and table of DIR")
    ab.add_argument("--json", action="store_true", help="print results.json instead of the table")
    ab.add_argument("--no-progress", action="store_true")
    ab.set_defaults(fn=run)


def run(args) -> int:
    """Run (or resume) a suite, or redraw a finished one's report; print the final-budget table."""
    from .figures import write_report
    from .runner import run_suite, summary_table

    if args.report:
        results = json.loads((Path(args.report) / "results.json").read_text())
        out = Path(args.report)
    else:
        if not args.suite:
            raise ValueError("workbench ablate: give --suite masking|moe|recipe|FILE.yaml (or --report DIR)")
        from .suite import Suite

        suite = Suite.load(args.suite)
        out = Path(args.out or f"runs/ablate/{suite.name}")
        command = "workbench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        results = run_suite(suite, args.budget, args.seeds, args.checkpoints, out, progress=not args.no_progress,
                            command=command)
    write_report(results, out)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(format_table(results))
    return 1 if results["failures"] and not results["rows"] else 0


def format_table(results: dict) -> str:
    """The final-budget table: per variant, held-out loss and accuracies (mean [min, max] over seeds)."""
    from .runner import summary_table

    lines = [f"{results['suite']} at {results['budget']:.3g} training FLOPs, {results['seeds']} seed(s); "
             f"lower val_loss is better"]
    for metric in ("val_loss", "shape_accuracy", "colour_accuracy", "fid_proxy"):
        for row in summary_table(results, metric):
            close = f"  (within the spread of {', '.join(row['within_spread_of'])})" if row["within_spread_of"] else ""
            lines.append(f"  {metric:<16} {row['variant']:<20} {row['mean']:.4f} [{row['min']:.4f}, {row['max']:.4f}]"
                         f"{close}")
    for failure in results["failures"]:
        lines.append(f"  FAILED {failure['variant']} seed {failure['seed']}: {failure['error']}")
    return "\n".join(lines)
