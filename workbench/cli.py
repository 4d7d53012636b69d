"""The ``workbench`` command line.

    workbench prepare --source shapes --out data/prepared/shapes   latents + caption embeddings
    workbench info --preset nano [--json]        parameters by part, FLOPs
    workbench train --config configs/demo/stage1.yaml [--set k=v] [--resume auto]
    workbench pipeline --config configs/demo/pipeline.yaml [--set prepare.limit=500]   notebooks via papermill
    workbench sample --checkpoint runs/demo/stage4 --prompt "a red circle"
    workbench bench model|data|train [--json PATH]     speed benchmarks (JSON)
    workbench kernel install                     the Jupyter kernel for this venv
    workbench demo                               a 1-minute model tour (make demo runs `workbench pipeline`)
"""

from __future__ import annotations

import argparse
import json
import sys


def cmd_info(args) -> int:
    import torch

    from .config import parse_overrides
    from .model import MicroDiT

    with torch.device("meta"):  # no memory for the weights: xl_2 is summarised instantly
        model = MicroDiT.from_preset(args.preset, **parse_overrides(args.set))
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

        report = bench_model(presets=args.presets, batch=args.batch, resolution=args.resolution,
                             repeats=args.repeats, bf16=args.bf16, compile=args.compile)
    elif args.what == "train":
        from .bench.train import bench_train

        report = bench_train(presets=args.presets, batch=args.batch, resolution=args.resolution,
                             steps=args.steps, mixed_precision="bf16" if args.bf16 else "no", compile=args.compile,
                             data=args.data)
    else:
        from .bench.data import bench_data

        report = bench_data(n=args.n, resolution=args.resolution, batch_size=args.batch,
                            trim_padding=args.trim_padding)
    print(write_report(report, args.json))
    return 0


def cmd_train(args) -> int:
    from .config import parse_overrides
    from .train import Stage, Trainer

    stage = Stage.from_yaml(args.config, **parse_overrides(args.set))
    trainer = Trainer(stage, resume=args.resume)
    main = trainer.accelerator.is_main_process     # under `accelerate launch`, one report, not one per rank
    if trainer.resumed_from and main:
        print(f"resuming {stage.run}/{stage.name} from {trainer.resumed_from} (step {trainer.step_count})")
    trainer.run()
    last = trainer.history[-1] if trainer.history else {}
    if main:
        print(f"{stage.run}/{stage.name}: step {trainer.step_count}/{stage.steps}, "
              f"loss {last.get('loss', float('nan')):.4f} ({trainer.accelerator.num_processes} process(es)); "
              f"outputs in {stage.stage_dir}")
    return 0


def cmd_sample(args) -> int:
    from .train.sampling import sample_checkpoint

    path = sample_checkpoint(args.checkpoint, args.prompt, out=args.out, steps=args.steps, cfg_scale=args.cfg,
                             seed=args.seed, per_prompt=args.n, use_ema=not args.raw, sampler=args.sampler,
                             device=args.device)
    print(f"wrote {path}")
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

    from .data.prepare import add_prepare_arguments, run_prepare_cli

    prep = sub.add_parser("prepare", help="precompute latents and caption embeddings (resumable)")
    add_prepare_arguments(prep)
    prep.set_defaults(fn=run_prepare_cli)

    info = sub.add_parser("info", help="parameters by part and FLOPs of a preset")
    info.add_argument("--preset", default="nano")
    info.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a MicroDiTConfig field")
    info.add_argument("--resolution", type=int, default=None, help="latent side for the FLOP count")
    info.add_argument("--json", action="store_true", help="end with one JSON line")
    info.set_defaults(fn=cmd_info)

    bench = sub.add_parser("bench", help="performance benchmarks (JSON)")
    bench.add_argument("what", choices=["model", "data", "train"])
    bench.add_argument("--json", metavar="PATH", default=None, help="also write the report here")
    bench.add_argument("--batch", type=int, default=16)
    bench.add_argument("--resolution", type=int, default=32)
    bench.add_argument("--repeats", type=int, default=5)
    bench.add_argument("--bf16", action="store_true", help="bf16 autocast (model, train)")
    bench.add_argument("--compile", action="store_true", help="torch.compile the model (model, train)")
    bench.add_argument("--presets", type=lambda s: tuple(s.split(",")), default=("nano", "micro"), metavar="A,B",
                       help="MicroDiT presets (model, train; default nano,micro), e.g. xl_2 on a GPU")
    bench.add_argument("--steps", type=int, default=6, help="timed steps per round (train)")
    bench.add_argument("--data", default=None, help="a prepared dataset to train on (train; default: a temporary "
                       "shapes set)")
    bench.add_argument("--n", type=int, default=512, help="images to prepare (data)")
    bench.add_argument("--trim-padding", action="store_true", help="text encoder stops at the longest caption (data)")
    bench.set_defaults(fn=cmd_bench)

    train = sub.add_parser("train", help="train one stage (also under `accelerate launch -m workbench train`)")
    train.add_argument("--config", required=True, help="a stage YAML, e.g. configs/demo/stage1.yaml")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a Stage field")
    train.add_argument("--resume", default="auto", help="auto (default), never, or a checkpoint path")
    train.set_defaults(fn=cmd_train)

    from .pipeline import add_pipeline_arguments, run_pipeline_cli

    pipe = sub.add_parser("pipeline", help="prepare, train every stage and evaluate by running the notebooks "
                                           "(papermill); resumable; writes runs/<run>/report.html")
    add_pipeline_arguments(pipe)
    pipe.set_defaults(fn=run_pipeline_cli)

    samp = sub.add_parser("sample", help="sample prompts from a checkpoint into a PNG grid")
    samp.add_argument("--checkpoint", required=True, help="a checkpoint folder, or a stage folder (newest checkpoint)")
    samp.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for several)")
    samp.add_argument("--cfg", type=float, default=5.0)
    samp.add_argument("--steps", type=int, default=30)
    samp.add_argument("--seed", type=int, default=0)
    samp.add_argument("--n", type=int, default=4, help="images per prompt")
    samp.add_argument("--sampler", default="heun")
    samp.add_argument("--raw", action="store_true", help="use the raw weights even when an EMA exists")
    samp.add_argument("--out", default="samples.png")
    samp.add_argument("--device", default=None, help="cuda, cpu, ... (default: the GPU when there is one)")
    samp.set_defaults(fn=cmd_sample)

    kernel = sub.add_parser("kernel", help="Jupyter kernel management")
    kernel.add_argument("action", choices=["install"])
    kernel.set_defaults(fn=cmd_kernel)

    demo = sub.add_parser("demo", help="a 1-minute model tour: summary, FLOPs, overfit one batch, sample (make demo runs the pipeline)")
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
