"""The ``workbench`` command line.

    workbench info --preset nano [--json]        parameters by part, FLOPs
    workbench bench model [--json PATH]          forward+backward speed, masking speed-up
    workbench kernel install                     the Jupyter kernel for this venv
    workbench demo                               the main job on the embedded data
"""

from __future__ import annotations

import argparse
import json
import sys


def _parse_value(text: str):
    """``--set`` values: YAML scalars (``4``, ``0.5``, ``true``, ``[0.5, 1.0]``)."""
    import yaml

    return yaml.safe_load(text)


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise SystemExit(f"error: --set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = _parse_value(value)
    return out


def cmd_info(args) -> int:
    import torch

    from .model import MicroDiT

    with torch.device("meta"):  # no memory for the weights: xl_2 is summarised instantly
        model = MicroDiT.from_preset(args.preset, **_overrides(args.set))
    summary = model.summary()
    side = args.resolution or model.arch.sample_size
    flops = {f"forward_gflops_mask_{r}": round(model.flops(side, r) / 1e9, 3) for r in (0.0, 0.75)}
    print(f"MicroDiT preset {args.preset!r}: latent {side}x{side}x{model.arch.in_channels}, "
          f"captions {model.arch.caption_dim}-d")
    print(summary)
    for key, value in flops.items():
        print(f"{key:<28}{value:>12}")
    if args.json:
        print(json.dumps({"preset": args.preset, **summary.as_dict(), "resolution": side, **flops,
                          "config": summary.config}))
    return 0


def cmd_bench(args) -> int:
    from .bench import write_report

    if args.what == "model":
        from .bench.model import bench_model

        report = bench_model(batch=args.batch, resolution=args.resolution, repeats=args.repeats, bf16=args.bf16)
    else:
        raise SystemExit(f"error: unknown benchmark {args.what!r}")
    print(write_report(report, args.json))
    return 0


def cmd_kernel(args) -> int:
    from .kernel import install_kernel

    print(f"installed kernel 'workbench' in {install_kernel()}")
    return 0


def cmd_demo(args) -> int:
    from .tour import run_tour

    run_tour(steps=args.steps)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``workbench`` command."""
    parser = argparse.ArgumentParser(prog="workbench", description="MicroDiT Workbench: micro-budget diffusion training")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="parameters by part and FLOPs of a preset")
    info.add_argument("--preset", default="nano")
    info.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a MicroDiTConfig field")
    info.add_argument("--resolution", type=int, default=None, help="latent side for the FLOP count")
    info.add_argument("--json", action="store_true", help="end with one JSON line")
    info.set_defaults(fn=cmd_info)

    bench = sub.add_parser("bench", help="performance benchmarks (JSON)")
    bench.add_argument("what", choices=["model"])
    bench.add_argument("--json", metavar="PATH", default=None, help="also write the report here")
    bench.add_argument("--batch", type=int, default=16)
    bench.add_argument("--resolution", type=int, default=32)
    bench.add_argument("--repeats", type=int, default=5)
    bench.add_argument("--bf16", action="store_true", help="bf16 autocast")
    bench.set_defaults(fn=cmd_bench)

    kernel = sub.add_parser("kernel", help="Jupyter kernel management")
    kernel.add_argument("action", choices=["install"])
    kernel.set_defaults(fn=cmd_kernel)

    demo = sub.add_parser("demo", help="the main job on the embedded default data")
    demo.add_argument("--steps", type=int, default=200)
    demo.set_defaults(fn=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``workbench`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
