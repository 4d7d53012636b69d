"""``workbench bench model|data|train|memory|step|gpu|peer|contention``: the command's options and what each runs."""

from __future__ import annotations


def add_bench_parser(sub) -> None:
    """The ``bench`` subcommand of ``workbench``."""
    bench = sub.add_parser("bench", help="performance benchmarks (JSON)")
    bench.add_argument("what", choices=["model", "data", "train", "memory", "step", "gpu", "peer",
                                               "contention"])
    bench.add_argument("--json", metavar="PATH", default=None, help="also write the report here")
    bench.add_argument("--batch", type=int, default=None, help="batch size (default 16; peer: 8)")
    bench.add_argument("--resolution", type=int, default=None, help="image side in pixels (data, train, step: "
                                                                   "default 32; contention: 16, the demo's stage 1)")
    bench.add_argument("--latent-size", type=int, default=32, help="the model input's side (model)")
    bench.add_argument("--repeats", type=int, default=5)
    bench.add_argument("--bf16", action="store_true", help="bf16 autocast (model, train, step)")
    bench.add_argument("--precision", choices=["no", "bf16", "fp16", "bf16-mixed"], default=None,
                       help="Stage.mixed_precision (train, step; default: bf16 with --bf16, else no)")
    bench.add_argument("--compile", action="store_true", help="torch.compile each block (MicroDiT.compile_blocks; "
                                                                  "model, train, step)")
    bench.add_argument("--gradient-checkpointing", action="store_true",
                       help="recompute each block's activations in the backward pass (model)")
    bench.add_argument("--presets", type=lambda s: tuple(s.split(",")), default=None, metavar="A,B",
                       help="MicroDiT presets (model, train: default nano,micro, e.g. xl_2 on a GPU; memory: the "
                            "first, default micro)")
    bench.add_argument("--steps", type=int, default=None, help="timed steps per round (train, default 6); "
                                                               "training steps (memory, default 1000)")
    bench.add_argument("--data", default=None, help="a prepared dataset to train on (train; default: a temporary "
                       "shapes set)")
    bench.add_argument("--n", type=int, default=512, help="images to prepare (data)")
    bench.add_argument("--mask", type=float, default=0.75, help="mask ratio (step)")
    bench.add_argument("--profile", action="store_true",
                       help="also list the commonest dispatched ops and where the time goes (step)")
    bench.add_argument("--official", metavar="PATH", default=None,
                       help="peer: the root of a SonyResearch/micro_diffusion checkout, importable with its "
                            "requirements (never copied into this package)")
    bench.add_argument("--trim-padding", action="store_true", help="text encoder stops at the longest caption (data)")
    bench.set_defaults(fn=cmd_bench)


def precision(args) -> str:
    """The Stage.mixed_precision a ``bench train|step`` run uses."""
    return args.precision or ("bf16" if args.bf16 else "no")


def cmd_bench(args) -> int:
    from . import write_report
    from ..errors import InputError

    if args.what == "model":
        from .model import bench_model

        report = bench_model(presets=args.presets or ("nano", "micro"), batch=args.batch or 16,
                             latent_size=args.latent_size,
                             repeats=args.repeats, bf16=args.bf16, compile=args.compile,
                             gradient_checkpointing=args.gradient_checkpointing)
    elif args.what == "train":
        from .train import bench_train

        report = bench_train(presets=args.presets or ("nano", "micro"), batch=args.batch or 16,
                             resolution=args.resolution or 32,
                             steps=args.steps or 6, mixed_precision=precision(args), compile=args.compile,
                             data=args.data)
    elif args.what == "memory":
        from .memory import bench_memory

        steps = args.steps or 1000
        report = bench_memory(preset=(args.presets or ("micro",))[0], steps=steps, batch=args.batch or 16,
                              warmup=max(1, min(100, steps // 5)))
    elif args.what == "step":
        from .step import bench_step

        report = bench_step(preset=(args.presets or ("micro",))[0], mask_ratio=args.mask, batch=args.batch or 16,
                            resolution=args.resolution or 32, steps=args.steps or 6,
                            mixed_precision=precision(args), compile=args.compile, data=args.data)
        if not args.profile:
            report.pop("top_ops"), report.pop("top_self_time")
    elif args.what == "peer":
        from .peer import bench_peer

        if not args.official:
            raise InputError("workbench bench peer needs --official PATH: the root of a SonyResearch/micro_diffusion "
                             "checkout")
        report = bench_peer(args.official, batch=args.batch or 8, repeats=args.repeats, compile=args.compile)
    elif args.what == "contention":
        from .contention import bench_contention

        report = bench_contention(preset=(args.presets or ("nano",))[0], batch=args.batch or 32,
                                  resolution=args.resolution or 16, mask_ratio=args.mask)
    elif args.what == "gpu":
        from .gpu import bench_gpu

        report = bench_gpu(preset=(args.presets or ("xl_2",))[0], latent_size=args.latent_size, repeats=args.repeats)
    else:
        from .data import bench_data

        report = bench_data(n=args.n, resolution=args.resolution or 32, batch_size=args.batch or 16,
                            trim_padding=args.trim_padding)
    print(write_report(report, args.json))
    return 0
