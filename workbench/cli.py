"""The ``workbench`` command line.

    workbench prepare --source shapes --out data/prepared/shapes   latents + caption embeddings
    workbench info --preset nano [--json]        parameters by part, FLOPs
    workbench train --config configs/demo/stage1.yaml [--set k=v] [--resume auto]
    workbench pipeline --config configs/demo/pipeline.yaml [--set prepare.limit=500]   notebooks via papermill
    workbench sample --checkpoint runs/demo/stage4 --prompt "a red circle"
    workbench eval compositional --checkpoint runs/demo/stage4 --json scores.json   GenEval-like score
    workbench eval fid --checkpoint runs/demo/stage4 --samples 500 --json fid.json    FID-proxy (or Inception)
    workbench eval detector --json detector.json  the detector's accuracy on ground truth, clean and degraded
    workbench eval val-loss runs/demo/stage1 [--json]   held-out EDM loss at 8 fixed sigmas, fixed noise
    workbench train-detector                      retrain the shipped detector / FID-proxy feature weights
    workbench train-codec --out DIR               train a latent codec (AutoencoderKL) on the shapes data
    workbench bench model|data|train|memory [--json PATH]   speed and memory benchmarks (JSON)
    workbench export runs/demo/stage4 --out exports/demo   a diffusers pipeline folder (MicroDiTPipeline)
    workbench convert-official MicroDiT_XL_2.pt --out models/xl2   the paper's released weights as a checkpoint
    workbench import-mds coco/mds --out data/prepared/coco --vae V --text-encoder T   the paper's precomputed data
    workbench cost --config configs/paper --gpu h100 --mfu 0.45 [--gpus 8] [--price 3.79] [--json]   cost per stage
    workbench kernel install                     the Jupyter kernel for this venv
    workbench tour                               a 1-minute model tour (make demo runs `workbench pipeline`)
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from .bench.command import add_bench_parser  # no torch import: the CLI starts fast


class _PrepareHelpFormatter(argparse.HelpFormatter):
    """``workbench prepare --help``: the ``--source`` and ``--option`` help come from the source registry.

    The registry (``workbench.data.sources``) is imported only when the help is shown, so the other
    commands start without it.
    """

    def _get_help_string(self, action) -> str:
        if action.dest not in ("source", "option"):
            return super()._get_help_string(action)
        from .data.sources import source_class, source_kinds, spec_help

        if action.dest == "source":
            return f"{spec_help()} (default shapes)".replace("%", "%%")
        kinds = [source_class(kind) for kind in source_kinds() if source_class(kind).options]
        options = " ".join(f"[{cls.kind}] " + "; ".join(f"{name}: {text}" for name, text in cls.options.items()) + "."
                           for cls in kinds)
        return f"a source option (repeatable). {options}".replace("%", "%%")


def _add_prepare_arguments(parser) -> None:
    """The ``workbench prepare`` options."""
    parser.formatter_class = _PrepareHelpFormatter
    parser.add_argument("--source", default="shapes", help="a source spec (the kinds are listed with --help)")
    parser.add_argument("--out", required=True, help="output folder, e.g. data/prepared/NAME")
    parser.add_argument("--codec", default="pixel", help="pixel | vae:PATH (a local AutoencoderKL folder)")
    parser.add_argument("--text-encoder", default="default",
                        help="default (embedded MiniLM-L6) | PATH (a local transformers folder, or an open_clip "
                             "folder such as the paper's DFN5B CLIP)")
    parser.add_argument("--resolutions", default="32", help="comma-separated square sizes, e.g. 32,64")
    parser.add_argument("--limit", type=int, default=None, help="at most N source records")
    parser.add_argument("--min-side", type=int, default=0, help="skip images whose short side is smaller")
    parser.add_argument("--batch-size", type=int, default=64, help="rows per encode batch")
    parser.add_argument("--shard-size", type=int, default=512, help="source records per resumable shard")
    parser.add_argument("--seed", type=int, default=0, help="seed of the VAE posterior noise")
    parser.add_argument("--image-column", default=None,
                        help="image column of a saved dataset (default image) or MDS shards (default: jpg, jpeg, png, "
                             "image, webp)")
    parser.add_argument("--caption-column", default=None, help="caption column / metadata field")
    parser.add_argument("--max-length", type=int, default=None, help="caption tokens (text encoder default 77)")
    parser.add_argument("--trim-padding", action="store_true",
                        help="encode only real caption tokens (zeros at padding; faster for short captions)")
    parser.add_argument("--vae-mean", action="store_true", help="store the VAE posterior mean, not a sample")
    parser.add_argument("--device", default=None,
                        help="device of the codec and text encoder (default cuda if available)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a source option, e.g. n=5000 (the options are listed with --help)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print report.json at the end")


def cmd_prepare(args) -> int:
    """Run ``prepare`` from parsed ``add_prepare_arguments`` options; returns the exit status."""
    from .config import parse_overrides
    from .data.prepare import prepare

    options = parse_overrides(args.option, flag="--option")
    text_options = {}
    if args.max_length is not None:
        text_options["max_length"] = args.max_length
    if args.trim_padding:
        text_options["trim_padding"] = True
    codec_options = {"sample_posterior": False} if args.vae_mean else {}
    if args.device:
        text_options["device"] = codec_options["device"] = args.device
    report = prepare(
        args.source, args.out, codec=args.codec, text_encoder=args.text_encoder, resolutions=args.resolutions,
        limit=args.limit, batch_size=args.batch_size, shard_size=args.shard_size, min_side=args.min_side,
        seed=args.seed, image_column=args.image_column, caption_column=args.caption_column,
        codec_options=codec_options, text_encoder_options=text_options, progress=not args.no_progress, **options)
    if args.json:
        print(json.dumps(report.data, indent=2))
    elif args.no_progress:                         # no bar, but the same summary and skip counts
        print(report)
    return 0


def cmd_info(args) -> int:
    import torch

    from .config import parse_overrides
    from .model import MicroDiT

    with torch.device("meta"):  # no memory for the weights: xl_2 is summarised instantly
        model = MicroDiT.from_preset(args.preset, **parse_overrides(args.set))
    summary = model.summary()
    side = args.latent_size or model.arch.sample_size
    flops = {f"forward_gflops_mask_{r}": round(model.flops(side, r) / 1e9, 3) for r in (0.0, 0.75)}
    print(f"MicroDiT preset {args.preset!r}: latent {side}x{side}x{model.arch.in_channels}, "
          f"captions {model.arch.caption_dim}-d")
    print(summary)
    for key, value in flops.items():
        print(f"{key:<28}{value:>12}")
    if args.json:
        print(json.dumps({"preset": args.preset, **summary.as_dict(), "latent_size": side, **flops,
                          "config": summary.config}))
    return 0


def cmd_train(args) -> int:
    from .config import parse_overrides
    from .train import Stage, Trainer
    from .train.interrupt import exit_code

    stage = Stage.from_yaml(args.config, **parse_overrides(args.set))
    from .eval.compositional import evaluator_for

    trainer = Trainer(stage, resume=args.resume, fresh=args.fresh, evaluator=evaluator_for(stage))
    main = trainer.accelerator.is_main_process     # under `accelerate launch`, one report, not one per rank
    try:
        trainer.run()                              # Ctrl-C: ends the step, checkpoints, prints one line
    finally:
        trainer.close()                            # the stage folder's lock
    if trainer.interrupted:                        # Ctrl-C 130, SIGTERM (preemption) 143, as a shell reports them
        return exit_code(trainer.stop_signal)
    last = trainer.history[-1] if trainer.history else {}
    if main and not trainer.past_steps:            # a stage past its steps said so in its one line
        print(f"{stage.run}/{stage.name}: step {trainer.step_count}/{stage.steps}, "
              f"loss {last.get('loss', float('nan')):.4f} ({trainer.accelerator.num_processes} process(es)); "
              f"outputs in {stage.stage_dir}")
    return 0


def sampler_option_flags() -> dict[str, tuple[str, float, str]]:
    """``--flag`` -> (option name, default, help) for every option of every registered sampler."""
    from .diffusion import SAMPLERS

    flags = {}
    for entry in SAMPLERS.values():
        for option in entry.options:
            flag = "--" + option.name.replace("_", "-")
            takers = [e.name for e in SAMPLERS.values() if option.name in {o.name for o in e.options}]
            flags.setdefault(flag, (option.name, option.default, f"{option.help} ({', '.join(takers)} only; "
                                                                 f"default {option.default:g})"))
    return flags


def add_sample_parser(sub) -> None:
    """``workbench sample``: its sampler choices and options come from the sampler registry."""
    from .diffusion import DEFAULT_SAMPLER, SAMPLERS

    samp = sub.add_parser("sample", help="sample prompts from a checkpoint into a PNG grid",
                          formatter_class=argparse.RawDescriptionHelpFormatter,
                          epilog="samplers:\n" + "\n".join(f"  {name:<16} {entry.description}"
                                                           for name, entry in SAMPLERS.items()))
    samp.add_argument("--checkpoint", required=True,
                      help="a checkpoint folder, a stage folder (its newest checkpoint), or 'reference' (the "
                           "trained model that ships with the package)")
    samp.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for several)")
    samp.add_argument("--cfg-scale", type=float, default=5.0, help="classifier-free guidance scale (default 5.0)")
    samp.add_argument("--steps", type=int, default=30, help="σ levels of the Karras schedule (default 30)")
    samp.add_argument("--seed", type=int, default=0, help="seed of the initial noise and of any noise the sampler "
                                                          "adds (default 0; the same images on every device)")
    samp.add_argument("--n", type=int, default=4, help="images per prompt (default 4)")
    samp.add_argument("--sampler", default=DEFAULT_SAMPLER, choices=list(SAMPLERS), metavar="NAME",
                      help=f"one of {', '.join(SAMPLERS)} (default {DEFAULT_SAMPLER}; listed below)")
    for flag, (name, _default, text) in sampler_option_flags().items():
        samp.add_argument(flag, dest=name, type=float, default=None, metavar="X", help=text)
    samp.add_argument("--raw", action="store_true", help="use the raw weights even when an EMA exists")
    samp.add_argument("--out", default="samples.png", help="the PNG grid to write, a row per prompt "
                                                           "(default samples.png)")
    samp.add_argument("--device", default=None, help="cuda, cpu, ... (default: the GPU when there is one)")
    samp.set_defaults(fn=cmd_sample)


def cmd_sample(args) -> int:
    from .diffusion import get_sampler
    from .train.inference import sample_checkpoint

    given = {name: getattr(args, name) for name, _, _ in sampler_option_flags().values()
             if getattr(args, name) is not None}
    get_sampler(args.sampler).resolve(given)                   # a misplaced option fails before loading anything
    path = sample_checkpoint(args.checkpoint, args.prompt, out=args.out, steps=args.steps, cfg_scale=args.cfg_scale,
                             seed=args.seed, per_prompt=args.n, use_ema=not args.raw, sampler=args.sampler,
                             device=args.device, sampler_options=given)
    print(f"wrote {path}")
    return 0


def _write_json(report: dict, path: str | None) -> None:
    if path:
        from .io import atomic_write_json

        atomic_write_json(path, report)
        print(f"wrote {path}")


def cmd_train_detector(args) -> int:
    from .eval.detector import CLASSIFIER_WEIGHTS, train_classifier
    from .eval.fid import FEATURE_WEIGHTS, train_feature_net

    _, report = train_classifier(n_scenes=args.scenes, epochs=args.epochs, out=args.out or CLASSIFIER_WEIGHTS)
    print(f"shape classifier: {report} -> {args.out or CLASSIFIER_WEIGHTS}")
    if not args.classifier_only:
        _, feat = train_feature_net(out=args.features_out or FEATURE_WEIGHTS)
        print(f"scene features: {feat} -> {args.features_out or FEATURE_WEIGHTS}")
    return 0


def cmd_train_codec(args) -> int:
    from .config import from_dict, parse_overrides
    from .train.codec import CodecConfig, train_codec

    report = train_codec(from_dict(CodecConfig, parse_overrides(args.set)), out=args.out)
    print(f"codec: {report['seconds']} s, PSNR on val scenes {report['val_psnr']} dB, scaling_factor "
          f"{report['scaling_factor']:.4f}, shift_factor {report['shift_factor']:.4f} -> {args.out}")
    print(f"use it with: workbench prepare --codec vae:{args.out} ...")
    _write_json(report, args.json)
    return 0


def cmd_export(args) -> int:
    from .interop import export_pipeline

    out = export_pipeline(args.checkpoint, args.out, use_ema=not args.raw)
    print(f"wrote a diffusers pipeline to {out}; load it with MicroDiTPipeline.from_pretrained({str(out)!r})")
    return 0


def cmd_convert_official(args) -> int:
    from .interop.official import convert_official

    path = convert_official(args.checkpoint, args.out, arch=None if args.arch == "custom" else args.arch,
                            in_channels=args.in_channels, config=args.config, vae=args.vae,
                            text_encoder=args.text_encoder, allow_pickle=args.allow_pickle)
    print(f"wrote {path}; sample it with SamplerPanel({str(args.out)!r}) or `workbench sample --checkpoint "
          f"{args.out}`, fine-tune it with init_from: {args.out}")
    return 0


def cmd_import_mds(args) -> int:
    from .data.mds_import import import_mds

    info = import_mds(args.source, args.out, vae=args.vae, text_encoder=args.text_encoder,
                      caption_key=args.caption_key)
    print(f"train on it with data: {args.out} (resolutions {', '.join(map(str, info.resolutions))})")
    return 0


def cmd_cost(args) -> int:
    """``workbench cost``: a recipe's FLOPs, GPU-hours, wall-clock days and dollars on one GPU kind."""
    from .cost_report import projection_text, recipe_plans
    from .eval.cost import project

    projection = project(recipe_plans(args.config, args.latent_downsample), mfu=args.mfu, price=args.price,
                         gpus=args.gpus, gpu=args.gpu)
    print(json.dumps(projection, indent=2) if args.json else projection_text(projection))
    return 0


def cmd_kernel(args) -> int:
    from .kernel import install_kernel

    print(f"installed kernel 'workbench' in {install_kernel()}")
    return 0


def cmd_tour(args) -> int:
    from .tour import run_tour

    run_tour(steps=args.steps)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``workbench`` command: one ``_add_*`` function per group of subcommands."""
    parser = argparse.ArgumentParser(prog="workbench",
                                     description="MicroDiT Workbench: micro-budget diffusion training")
    parser.add_argument("--debug", action="store_true", help="show tracebacks (also WORKBENCH_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_data_commands(sub)
    _add_model_commands(sub)
    add_bench_parser(sub)
    from .pipeline import add_pipeline_arguments, run_pipeline_cli

    pipe = sub.add_parser("pipeline", help="prepare, train every stage and evaluate by running the notebooks "
                                           "(papermill); resumable; writes runs/<run>/report.html")
    add_pipeline_arguments(pipe)
    pipe.set_defaults(fn=run_pipeline_cli)
    add_sample_parser(sub)

    from .eval.command import add_parser as add_eval_parser  # compositional | fid | detector | val-loss
    add_eval_parser(sub)
    _add_trainer_tools(sub)
    _add_cost_command(sub)
    from .ablate.command import add_parser as add_ablate_parser
    add_ablate_parser(sub)
    _add_setup_commands(sub)
    for command in sub.choices.values():            # `workbench train ... --debug` works as well
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def _add_data_commands(sub) -> None:
    """``prepare`` and ``import-mds``: datasets in the prepared format."""
    prep = sub.add_parser("prepare", help="precompute latents and caption embeddings (resumable)")
    _add_prepare_arguments(prep)
    prep.set_defaults(fn=cmd_prepare)

    mds = sub.add_parser("import-mds", help="import the paper's precomputed MDS shards as a prepared dataset "
                                            "(resumable; docs/interop.md)")
    mds.add_argument("source", help="an MDS folder (index.json + shards, or one sub-folder per process)")
    mds.add_argument("--out", required=True, help="the prepared dataset folder to write")
    mds.add_argument("--vae", required=True, help="the local VAE folder the latents were made with (SDXL VAE)")
    mds.add_argument("--text-encoder", required=True, help="the local text encoder folder the caption states were "
                                                           "made with (DFN5B CLIP, an open_clip folder)")
    mds.add_argument("--caption-key", default="caption", help="the caption column (its states: <key>_latents)")
    mds.set_defaults(fn=cmd_import_mds)


def _add_model_commands(sub) -> None:
    """``info``, ``train``, ``export`` and ``convert-official``: models and their checkpoints."""
    info = sub.add_parser("info", help="parameters by part and FLOPs of a preset")
    info.add_argument("--preset", default="nano")
    info.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a MicroDiTConfig field")
    info.add_argument("--latent-size", type=int, default=None, help="latent side for the FLOP count")
    info.add_argument("--json", action="store_true", help="end with one JSON line")
    info.set_defaults(fn=cmd_info)

    train = sub.add_parser("train", help="train one stage (also under `accelerate launch -m workbench train`)")
    train.add_argument("--config", required=True, help="a stage YAML, e.g. configs/demo/stage1.yaml")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a Stage field")
    train.add_argument("--resume", default="auto", help="auto (default), never, or a checkpoint path")
    train.add_argument("--fresh", action="store_true", help="delete this stage's earlier run and start over")
    train.set_defaults(fn=cmd_train)

    export = sub.add_parser("export", help="write a checkpoint or stage folder as a diffusers pipeline folder")
    export.add_argument("checkpoint", help="a checkpoint or stage folder, or 'reference'")
    export.add_argument("--out", required=True, help="the pipeline folder to write")
    export.add_argument("--raw", action="store_true", help="the raw weights instead of the EMA")
    export.set_defaults(fn=cmd_export)

    conv = sub.add_parser("convert-official", help="convert one of the paper's released checkpoints into a "
                                                   "workbench checkpoint (docs/interop.md)")
    conv.add_argument("checkpoint", help="the official .pt (state dict or Composer checkpoint) or .safetensors")
    conv.add_argument("--arch", choices=["xl_2", "tiny_2", "custom"], default="xl_2",
                      help="the official model (custom: all sizes from --config)")
    conv.add_argument("--in-channels", type=int, choices=[4, 16], default=None,
                      help="latent channels: 4 (SDXL VAE, the default) or 16 (Ostris VAE)")
    conv.add_argument("--config", default=None, help="a YAML of MicroDiTConfig fields for sizes that match no preset")
    conv.add_argument("--vae", default=None, help="the local VAE folder the model was trained with (for sampling)")
    conv.add_argument("--text-encoder", default=None, help="the local DFN5B CLIP folder (for sampling)")
    conv.add_argument("--allow-pickle", action="store_true", help="load a .pt that pickles Python objects "
                                                                  "(a Composer checkpoint); only files you trust")
    conv.add_argument("--out", required=True, help="the checkpoint folder to write")
    conv.set_defaults(fn=cmd_convert_official)


def _add_trainer_tools(sub) -> None:
    """``train-detector`` and ``train-codec``: the evaluation's classifier and a latent codec for the shapes data."""
    det = sub.add_parser("train-detector", help="retrain the shipped shape classifier and FID-proxy features")
    det.add_argument("--scenes", type=int, default=24000)
    det.add_argument("--epochs", type=int, default=6)
    det.add_argument("--out", default=None, help="classifier weights (default: the shipped file)")
    det.add_argument("--features-out", default=None, help="feature-net weights (default: the shipped file)")
    det.add_argument("--classifier-only", action="store_true")
    det.set_defaults(fn=cmd_train_detector)

    codec = sub.add_parser("train-codec", help="train a latent codec (diffusers AutoencoderKL) on the shapes data")
    codec.add_argument("--out", required=True, help="output folder (save_pretrained)")
    codec.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a CodecConfig field")
    codec.add_argument("--json", default=None, metavar="PATH", help="write the training report here")
    codec.set_defaults(fn=cmd_train_codec)


def _add_cost_command(sub) -> None:
    """``cost``: a recipe's training cost projected onto a GPU kind."""
    cost = sub.add_parser("cost", help="project a recipe's training cost onto a GPU kind: FLOPs, GPU-hours, days, "
                                       "dollars per stage (docs/benchmarks.md)")
    cost.add_argument("--config", default="paper", help="paper (the paper's 4 stages, default) | a pipeline YAML | a "
                      "stage YAML | a folder of them (configs/paper) | comma-separated stage YAMLs")
    cost.add_argument("--gpu", default="h100", help="a100 | h100 | h200 | l40s (dense bf16 datasheet peaks; "
                      "default h100)")
    cost.add_argument("--mfu", type=float, default=None, help="model FLOPs utilisation in (0, 1] (default: the "
                      "paper-implied one, about 0.18)")
    cost.add_argument("--gpus", type=int, default=8, help="GPUs the wall-clock days are spread over (default 8)")
    cost.add_argument("--price", type=float, default=None, help="$ per GPU-hour (default: the GPU's assumed price)")
    cost.add_argument("--latent-downsample", type=int, default=None,
                      help="the codec's downsample factor (default: the pipeline's, else resolution / the model's "
                           "sample_size)")
    cost.add_argument("--json", action="store_true", help="print the projection as JSON instead of a table")
    cost.set_defaults(fn=cmd_cost)


def _add_setup_commands(sub) -> None:
    """``kernel`` and ``tour``: set-up and a first look."""
    kernel = sub.add_parser("kernel", help="Jupyter kernel management")
    kernel.add_argument("action", choices=["install"])
    kernel.set_defaults(fn=cmd_kernel)

    tour = sub.add_parser("tour", help="a 1-minute model tour: summary, FLOPs, overfit one batch, sample "
                                       "(make demo runs the pipeline)")
    tour.add_argument("--steps", type=int, default=200)
    tour.set_defaults(fn=cmd_tour)


def one_line(err: BaseException) -> str | None:
    """The one-line message for a failure a user can act on; None for a bug (which keeps its traceback).

    User errors are the project's ``WorkbenchError`` (``InputError``, ``MissingFileError``, ...), an
    ``OSError`` about a named file (its errno text and the file), out-of-memory and a refused unpickle.
    A bare ``ValueError``, ``TypeError`` or ``KeyError`` from inside the code is a bug, so it is shown whole.
    """
    import pickle

    import torch

    from .errors import WorkbenchError

    if isinstance(err, torch.OutOfMemoryError):
        return f"out of memory: {str(err).splitlines()[0]}; lower micro_batch (--set micro_batch=...)"
    if isinstance(err, pickle.UnpicklingError):
        return f"refused to unpickle a file ({str(err).splitlines()[0][:160]}); it was not loaded"
    if isinstance(err, WorkbenchError) or (isinstance(err, OSError) and err.filename is not None):
        return str(err)
    return None


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """How the CLI prints a warning: ``warning: <message>`` on one line (``--debug`` shows Python's form)."""
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``workbench`` console script.

    A failure the user can act on prints one ``error: ...`` line (exit 2); ``--debug`` or
    ``WORKBENCH_DEBUG=1`` shows its traceback instead. Ctrl-C exits with 130.
    """
    from .errors import debug_enabled

    args = build_parser().parse_args(argv)
    if not (args.debug or debug_enabled()):
        warnings.formatwarning = one_line_warning      # "warning: ..." without Python's source line
    try:
        return args.fn(args)
    except Exception as err:
        message = None if (args.debug or debug_enabled()) else one_line(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: workbench {args.command} stopped (a rerun resumes where it can)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
