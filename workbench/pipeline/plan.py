"""The pipeline's plan: every parameter validated and every step built before any kernel starts.

One small function per step kind (``plan_prepare``, ``plan_stage``, ``plan_evaluate``, ``plan_ablate``) knows which
settings it reads, so an error names the setting that caused it (``prepare.limit``,
``overrides.mask_ratio``, ``stage_overrides.stage2.lr``, a stage YAML) without guessing.
"""

from __future__ import annotations

import ast
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import architecture_diff, did_you_mean, format_diff
from ..io import fingerprint
from ..notebook import parse_mapping
from .config import PipelineConfig, PipelineConfigError, _expect, _is_int

PREPARE_NOTEBOOK = "01_prepare_data.ipynb"
TRAIN_NOTEBOOK = "02_train_stage.ipynb"
EVALUATE_NOTEBOOK = "03_sample_and_evaluate.ipynb"
ABLATE_NOTEBOOK = "06_ablations.ipynb"
RERUN_KINDS = ("evaluate", "ablate")           # steps that run again when their parameters change
RUNTIME_PARAMETERS = ("workdir", "threads")    # set by the pipeline for every notebook
UNFINGERPRINTED = (*RUNTIME_PARAMETERS, "print_every", "live")   # parameters that do not change a step's results
FREE_TYPED = ("resolutions", "source_options", "overrides")   # checked by their own parsers, not by default type
STAGE_PARAMETERS = ("run", "runs_dir", "data", "init_from")   # set by the pipeline for every stage
PIPELINE_OWNED = ("run", "runs_dir", "data", "name")          # Stage fields the pipeline sets itself


@dataclass
class Step:
    """One notebook run of the pipeline."""

    key: str                     # 01_prepare, 02_<stage>, 03_evaluate, 06_ablate
    kind: str                    # prepare | train | evaluate | ablate
    template: Path               # the notebook template
    output: Path                 # the executed notebook
    parameters: dict             # papermill parameters
    label: str = ""              # what the progress line says about it
    stage: str | None = None     # the stage name (train steps)
    artefact: Path | None = None # prepared folder (prepare) or stage folder (train)

    @property
    def fingerprint(self) -> str:
        return fingerprint({k: v for k, v in self.parameters.items() if k not in UNFINGERPRINTED})


def declared_parameters(notebook: Path) -> dict[str, Any]:
    """The parameters a notebook's ``parameters`` cell declares, with their default values."""
    import papermill as pm

    if not notebook.is_file():
        raise PipelineConfigError(f"notebooks: template {str(notebook)!r} not found")
    declared = {}
    for name, info in pm.inspect_notebook(str(notebook)).items():
        try:
            declared[name] = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError):
            declared[name] = None
    if not declared:
        raise PipelineConfigError(f"notebooks: {notebook} has no 'parameters'-tagged cell")
    return declared


def check_parameters(section: str, values: dict, declared: dict, notebook: Path) -> None:
    """Unknown names and types (those of the declared defaults) of a notebook's parameters."""
    for name, value in values.items():
        where = f"{section}.{name}"
        if name in RUNTIME_PARAMETERS or name not in declared:
            known = [k for k in declared if k not in RUNTIME_PARAMETERS]
            raise PipelineConfigError(f"{where}: unknown parameter of {notebook.name}{did_you_mean(name, known)}")
        default = declared[name]
        if default is None or value is None or name in FREE_TYPED:
            continue
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = _is_int(value)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = isinstance(value, type(default))
        _expect(ok, where, f"a {type(default).__name__} (like the notebook's default {default!r})", value)


def _check_prepare_values(p: dict) -> None:
    """Ranges and paths of the prepare parameters (notebook 01), before any kernel starts."""
    from ..data.prepared_format import parse_resolutions
    from ..data.sources import parse_source_spec

    try:
        parse_source_spec(p["source"])
    except (ValueError, FileNotFoundError) as err:
        raise PipelineConfigError(f"prepare.source: {err}") from None
    codec = p["codec"]
    if not isinstance(codec, str) or not (codec == "pixel" or codec.startswith("vae:")):
        raise PipelineConfigError(f"prepare.codec: expected 'pixel' or 'vae:PATH', got {codec!r}")
    if codec.startswith("vae:") and not Path(codec[4:]).expanduser().is_dir():
        raise PipelineConfigError(f"prepare.codec: VAE folder {codec[4:]!r} does not exist")
    text = p["text_encoder"]
    if text != "default" and not Path(str(text)).expanduser().is_dir():
        raise PipelineConfigError(f"prepare.text_encoder: expected 'default' or an existing model folder, got {text!r}")
    try:
        parse_resolutions(p["resolutions"])
    except ValueError as err:
        raise PipelineConfigError(f"prepare.resolutions: {err}") from None
    limit = p.get("limit")
    _expect(limit is None or (_is_int(limit) and limit > 0), "prepare.limit", "a positive integer or null", limit)
    _expect(isinstance(p["output"], str) and p["output"], "prepare.output", "a folder path", p["output"])
    if Path(p["output"]).exists() and not Path(p["output"]).is_dir():
        raise PipelineConfigError(f"prepare.output: {p['output']!r} is a file, not a folder")
    try:
        parse_mapping(p.get("source_options"), "prepare.source_options")
    except ValueError as err:
        raise PipelineConfigError(str(err)) from None


def plan_prepare(config: PipelineConfig, runtime: dict, out_dir: Path) -> Step:
    """Step 01: notebook 01's parameters checked (names, types, ranges, paths); reads ``prepare.*``."""
    template = config.notebooks_dir / PREPARE_NOTEBOOK
    declared = declared_parameters(template)
    check_parameters("prepare", config.prepare, declared, template)
    params = {**{k: v for k, v in declared.items() if k not in RUNTIME_PARAMETERS}, **config.prepare}
    _check_prepare_values(params)
    return Step("01_prepare", "prepare", template, out_dir / "01_prepare.ipynb", {**runtime, **config.prepare},
                label=f"prepare {params['source']} -> {params['output']}", artefact=Path(params["output"]))


def build_stage(yaml_path: str, index: int, common: dict, own: dict, fixed: dict):
    """A stage from its YAML, the pipeline's ``overrides`` (``common``) and its ``stage_overrides`` (``own``).

    Built in layers (the YAML, then ``overrides``, then ``stage_overrides``, then what the pipeline
    sets), so an error names its origin; within a layer, the field that fails on its own is named,
    else the layer's fields together.
    """
    from ..train import Stage

    where = f"stages[{index}]"
    if not Path(yaml_path).is_file():
        raise PipelineConfigError(f"{where}: stage config {yaml_path!r} not found")
    try:
        stage = Stage.from_yaml(yaml_path)
    except (ValueError, FileNotFoundError) as err:
        raise PipelineConfigError(f"{where} ({yaml_path}): {err}") from None
    name, section = stage.name, f"stage_overrides.{stage.name}"
    for origin, layer in (("overrides", common), (section, own), (None, fixed)):
        for key in layer:
            if origin and key in PIPELINE_OWNED:
                raise PipelineConfigError(f"{origin}.{key}: set by the pipeline (use the pipeline's run / runs_dir / "
                                          "prepare.output, and each stage YAML's name)")
        try:
            stage = stage.replace(**layer)
        except (ValueError, TypeError) as err:
            culprit = next((k for k in layer if not _replaces(stage, k, layer[k])), None)
            label = (f"{origin}.{culprit}" if culprit else f"{origin} ({', '.join(layer)} together)") if origin \
                else f"{yaml_path}"
            raise PipelineConfigError(f"{label} (stage {name}, {yaml_path}): {err}") from None
    return stage


def _replaces(stage, key: str, value) -> bool:
    """Whether ``stage.replace(key=value)`` alone is valid."""
    try:
        stage.replace(**{key: value})
        return True
    except (ValueError, TypeError):
        return False


def plan_stage(config: PipelineConfig, index: int, previous, resolutions: tuple, data: str, runtime: dict,
               out_dir: Path, declared: dict) -> tuple[Step, object]:
    """Step 02 of one stage; reads ``stages[index]``, ``overrides``, ``stage_overrides.<stage>``."""
    yaml_path = config.stages[index]
    from ..train import Stage

    name = Stage.from_yaml(yaml_path).name if Path(yaml_path).is_file() else None
    own = config.stage_overrides.get(name, {}) if name else {}
    common = dict(config.overrides)
    fixed = {"run": config.run, "runs_dir": config.runs_dir, "data": data}
    if previous is not None and "init_from" not in {**common, **own}:
        fixed["init_from"] = str(previous.stage_dir)            # the chain: stage N+1 starts from stage N
    stage = build_stage(yaml_path, index, common, own, fixed)
    section = f"stage_overrides.{stage.name}"
    if stage.resolution not in resolutions:
        raise PipelineConfigError(f"prepare.resolutions: stage {stage.name} trains at "
                                  f"{stage.resolution} px but prepare makes {', '.join(map(str, resolutions))}")
    if previous is None and stage.init_from is not None and not Path(stage.init_from).exists():
        origin = (f"{section}.init_from" if "init_from" in own else "overrides.init_from" if "init_from" in common
                  else f"{yaml_path}: init_from")
        raise PipelineConfigError(f"{origin}: {stage.init_from!r} does not exist (the first stage can only start "
                                  "from an existing stage folder or checkpoint)")
    if previous is not None and stage.init_from == str(previous.stage_dir):
        diff = architecture_diff(previous.architecture(), stage.architecture())
        if diff:
            raise PipelineConfigError(f"{section}.model_overrides: stage {stage.name} starts from {previous.name} "
                                      f"but has another architecture ({format_diff(diff, previous.name, stage.name)})")
    overrides = {**common, **own}
    params = {**runtime, "config": yaml_path, **fixed, "print_every": config.print_every, "live": False}
    if "init_from" in overrides:
        params["init_from"] = overrides["init_from"]
    rest = {k: v for k, v in overrides.items() if k not in params}
    if rest:
        params["overrides"] = json.dumps(rest, sort_keys=True)
    template = config.notebooks_dir / TRAIN_NOTEBOOK
    check_parameters(f"notebook {TRAIN_NOTEBOOK}", {k: v for k, v in params.items() if k not in RUNTIME_PARAMETERS},
                     declared, template)
    label = (f"{stage.name}: {stage.steps} steps at {stage.resolution} px, mask {stage.mask_ratio:g}"
             + (f", from {Path(stage.init_from).name}" if stage.init_from else ""))
    step = Step(f"02_{stage.name}", "train", template, out_dir / f"02_{stage.name}.ipynb", params, label=label,
                stage=stage.name, artefact=stage.stage_dir)
    return step, stage


def plan_evaluate(config: PipelineConfig, names: list[str], runtime: dict, out_dir: Path) -> Step:
    """Step 03: notebook 03's parameters (``evaluate.*``); the run and its stages are set by the pipeline."""
    template = config.notebooks_dir / EVALUATE_NOTEBOOK
    declared = declared_parameters(template)
    check_parameters("evaluate", config.evaluate, declared, template)
    for key in ("run_dir", "stages"):
        if key in config.evaluate:
            raise PipelineConfigError(f"evaluate.{key}: set by the pipeline")
    params = {**runtime, **config.evaluate, "run_dir": str(config.run_dir), "stages": ",".join(names)}
    return Step("03_evaluate", "evaluate", template, out_dir / "03_evaluate.ipynb", params,
                label=f"scores, sample grids and metrics of {len(names)} stages")


def plan_ablate(config: PipelineConfig, runtime: dict, out_dir: Path) -> Step | None:
    """The optional step 06 (``ablate.*``): a ``workbench ablate`` suite run (or resumed) in notebook 06.

    Its results go to ``<run>/ablate`` unless ``ablate.out`` says otherwise; the engine resumes finished
    runs itself, so a rerun with more seeds only trains the new ones.
    """
    if not config.ablate:
        return None
    template = config.notebooks_dir / ABLATE_NOTEBOOK
    declared = declared_parameters(template)
    check_parameters("ablate", config.ablate, declared, template)
    if "run" in config.ablate:
        raise PipelineConfigError("ablate.run: set by the pipeline (the step always runs or resumes the suite)")
    values = {**{k: v for k, v in declared.items() if k not in RUNTIME_PARAMETERS}, **config.ablate}
    _expect(_is_int(values["seeds"]) and values["seeds"] >= 1, "ablate.seeds", "an integer >= 1", values["seeds"])
    _expect(_is_int(values["checkpoints"]) and values["checkpoints"] >= 1, "ablate.checkpoints", "an integer >= 1",
            values["checkpoints"])
    _expect(_is_int(values["jobs"]) and values["jobs"] >= 1, "ablate.jobs", "an integer >= 1", values["jobs"])
    _expect(isinstance(values["budget"], (int, float)) and values["budget"] > 0, "ablate.budget",
            "a positive number of FLOPs (e.g. 20e12)", values["budget"])
    from ..ablate.suite import Suite

    try:
        Suite.load(values["suite"])
    except (ValueError, FileNotFoundError) as err:
        raise PipelineConfigError(f"ablate.suite: {err}") from None
    params = {**runtime, **config.ablate, "out": config.ablate.get("out", str(config.run_dir / "ablate")),
              "run": True}
    return Step("06_ablate", "ablate", template, out_dir / "06_ablate.ipynb", params,
                label=f"ablation suite {values['suite']} at {float(values['budget']):.3g} FLOPs -> {params['out']}",
                artefact=Path(params["out"]))


def plan_steps(config: PipelineConfig, workdir: str | os.PathLike | None = None) -> list[Step]:
    """Validate everything and return the steps; raises ``PipelineConfigError`` naming the bad parameter.

    Nothing is started or written.
    """
    from ..data.prepared_format import parse_resolutions

    workdir = str(Path(workdir or os.getcwd()).resolve())
    _check_kernel(config.kernel)
    out_dir = config.run_dir / "notebooks"
    runtime = {"workdir": workdir, "threads": config.threads}
    prepare = plan_prepare(config, runtime, out_dir)
    data = str(prepare.artefact)
    resolutions = parse_resolutions({**declared_parameters(prepare.template), **config.prepare}["resolutions"])

    template = config.notebooks_dir / TRAIN_NOTEBOOK
    declared = declared_parameters(template)
    for name in ("config", "overrides", *STAGE_PARAMETERS):
        if name not in declared:
            raise PipelineConfigError(f"notebooks: {template} does not declare the parameter {name!r}")
    steps, names, previous = [prepare], [], None
    for index in range(len(config.stages)):
        step, stage = plan_stage(config, index, previous, resolutions, data, runtime, out_dir, declared)
        if stage.name in names:
            raise PipelineConfigError(f"stages[{index}] ({config.stages[index]}): stage name {stage.name!r} is used "
                                      "twice; stage names must be unique within a run")
        names.append(stage.name)
        steps.append(step)
        previous = stage
    unknown = sorted(set(config.stage_overrides) - set(names))
    if unknown:
        raise PipelineConfigError(f"stage_overrides.{unknown[0]}: no such stage{did_you_mean(unknown[0], names)}")
    steps.append(plan_evaluate(config, names, runtime, out_dir))
    ablate = plan_ablate(config, runtime, out_dir)
    return steps + ([ablate] if ablate else [])


def _check_kernel(name: str) -> None:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        raise PipelineConfigError(f"kernel: the Jupyter kernel {name!r} is not installed; run "
                                  f"`workbench kernel install` (or `make setup`)") from None
