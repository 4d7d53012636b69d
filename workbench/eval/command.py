"""The ``workbench eval`` subcommand (its parser and what it runs)::

    workbench eval compositional --checkpoint runs/demo/stage4 --json scores.json   GenEval-like score
    workbench eval fid --checkpoint runs/demo/stage4 --samples 500 --json fid.json    FID-proxy (or Inception)
    workbench eval detector --json detector.json   the detector's accuracy on ground truth, clean and degraded
    workbench eval val-loss runs/demo/stage1 [--json]   held-out EDM loss at 8 fixed sigmas (eval.heldout)
    workbench eval shape-probe runs/demo/stage4 [--json]   does the model use the shape word? (eval.shape_probe)
"""

from __future__ import annotations

import json
from ..errors import InputError


def add_parser(sub) -> None:
    """Add ``workbench eval`` to the CLI's subparsers."""
    from ..diffusion import DEFAULT_SAMPLER, SAMPLERS

    ev = sub.add_parser("eval", help="score a checkpoint: compositional (GenEval-like), fid, val-loss (held-out "
                                     "denoising loss), shape-probe (shape word used?), or the detector itself")
    ev.add_argument("what", choices=["compositional", "fid", "detector", "val-loss", "shape-probe"])
    ev.add_argument("target", nargs="?", default=None, metavar="CKPT",
                    help="a checkpoint or stage folder (or give --checkpoint)")
    ev.add_argument("--checkpoint", help="a checkpoint, or a stage folder (newest checkpoint)")
    ev.add_argument("--samples-per-prompt", type=int, default=4, help="compositional: images per eval prompt")
    ev.add_argument("--categories", nargs="+", default=None, metavar="NAME",
                    help="compositional: only these prompt categories, e.g. single_object colours (the single-object "
                         "score of docs/demo.md; default: all)")
    ev.add_argument("--samples", type=int, default=500, help="fid: generated images")
    ev.add_argument("--steps", type=int, default=30, help="σ levels of the Karras schedule (default 30)")
    ev.add_argument("--cfg-scale", type=float, default=None, help="CFG scale (default: the stage's sample_cfg_scale)")
    ev.add_argument("--seed", type=int, default=0, help="sampling seed; val-loss: the fixed noise's seed")
    ev.add_argument("--sampler", default=DEFAULT_SAMPLER, choices=list(SAMPLERS), metavar="NAME",
                    help=f"one of {', '.join(SAMPLERS)} with its default options (default {DEFAULT_SAMPLER})")
    ev.add_argument("--batch", type=int, default=32, help="images per sampling batch")
    ev.add_argument("--raw", action="store_true", help="use the raw weights even when an EMA exists")
    ev.add_argument("--device", default=None, help="cuda, cpu, ... (default: the GPU when there is one; "
                                                   "val-loss: cpu)")
    ev.add_argument("--inception-weights", default=None, help="fid: a local pt_inception-2015-12-05 weights file "
                    "for real Inception FID (needs the fid extra); default: the FID-proxy")
    ev.add_argument("--n", type=int, default=None, help="detector: ground-truth scenes per resolution and level "
                                                        "(default 500); val-loss: val rows (default 256); "
                                                        "shape-probe: single-object val scenes (default 96)")
    ev.add_argument("--data", default=None, help="val-loss: a prepared validation set (default: the shapes val "
                                                 "split prepared once with the checkpoint's codec and text encoder)")
    ev.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                    help="write the full report (protocol, scores) to PATH; --json alone prints it instead")
    ev.add_argument("--no-progress", action="store_true")
    ev.set_defaults(fn=run)


def _write_json(report: dict, path: str | None) -> None:
    if path == "-":
        print(json.dumps(report, indent=2, default=str))
    elif path:
        from ..io import atomic_write_json

        atomic_write_json(path, report)
        print(f"wrote {path}")


def run(args) -> int:
    """Run ``workbench eval WHAT``."""
    if args.what == "val-loss":
        from .heldout import val_loss_command

        return val_loss_command(args)
    args.checkpoint = args.checkpoint or args.target
    if args.what in ("compositional", "fid", "shape-probe") and not args.checkpoint:
        raise InputError(f"workbench eval {args.what} needs --checkpoint: a checkpoint, or a stage folder")
    quiet = args.json == "-"               # only the JSON on stdout
    if args.what == "compositional":
        from .compositional import evaluate_checkpoint, scores_table

        report = evaluate_checkpoint(args.checkpoint, samples_per_prompt=args.samples_per_prompt, steps=args.steps,
                                     cfg_scale=args.cfg_scale, seed=args.seed, sampler=args.sampler, batch=args.batch,
                                     use_ema=not args.raw, device=args.device,
                                     progress=not (args.no_progress or quiet), categories=args.categories)
        p = report["protocol"]
        if not quiet:
            for row in scores_table(report["scores"]):
                print(f"{row['score']:<36}{row['value'] if row['value'] is not None else '-':>8}")
            print(f"protocol: {p['samples_per_prompt']} samples/prompt, {p['steps']} {p['sampler']} steps, CFG "
                  f"{p['cfg_scale']}, seed {p['seed']}, {p['resolution']} px, weights {p['weights_sha256']} "
                  f"({'EMA' if p['ema'] else 'raw'}); {report['seconds']} s")
    elif args.what == "shape-probe":
        from .shape_probe import N, checkpoint_shape_probe, format_probe

        report = checkpoint_shape_probe(args.checkpoint, use_ema=not args.raw, device=args.device or "cpu",
                                        n=args.n or N, seed=args.seed)
        if not quiet:
            print(format_probe(report))
    elif args.what == "fid":
        from .fid import evaluate_fid_checkpoint

        report = evaluate_fid_checkpoint(args.checkpoint, samples=args.samples, steps=args.steps,
                                         cfg_scale=args.cfg_scale, seed=args.seed, sampler=args.sampler,
                                         batch=args.batch, inception_weights=args.inception_weights,
                                         use_ema=not args.raw, device=args.device,
                                         progress=not (args.no_progress or quiet))
        if not quiet:
            print(f"{report['metric']}: {report['value']} ({report['protocol']['samples']} samples; "
                  f"{report['seconds']} s)")
    else:
        from .detector import Detector, degradation_curve, detector_accuracy

        detector, n = Detector(), args.n or 500
        clean = {str(r): detector_accuracy(detector, n, r) for r in (32, 64)}
        report = {"clean": clean, "degraded": degradation_curve(detector, n)}
        if not quiet:
            for res, acc in clean.items():
                print(f"{res} px clean: " + ", ".join(f"{k} {v:.4f}" for k, v in acc.items() if isinstance(v, float)))
            for row in report["degraded"]:
                print(f"{row['resolution']} px {row['degradation']:<6}{row['level']:>6}: shape {row['shape']:.3f} "
                      f"colour {row['colour']:.3f} count {row['count']:.3f} relation {row['relation']:.3f}")
    _write_json(report, args.json)
    return 0
