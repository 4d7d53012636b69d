"""The headless pipeline: the stage notebooks run by papermill, one executed notebook per step.

    workbench pipeline --config configs/demo/pipeline.yaml [--set prepare.limit=500] [--set overrides.steps=50]

Steps, in order (templates in ``notebooks/``, kernel ``workbench``):

    01_prepare      01_prepare_data.ipynb          once: the prepared dataset every stage trains on
    02_<stage>      02_train_stage.ipynb           once per stage YAML; stage N+1 starts from stage N
    03_evaluate     03_sample_and_evaluate.ipynb   sample grids, metrics, comparison across stages

then ``report.html``. Everything lands in ``<runs_dir>/<run>/``::

    notebooks/01_prepare.ipynb, 02_stage1.ipynb, ..., 03_evaluate.ipynb    executed notebooks
    stage1/ ... stage4/        the Trainer's stage folders (checkpoints/, samples/, metrics.jsonl, stage.yaml)
    pipeline.yaml              the resolved pipeline config of the latest run
    pipeline_state.json        the completion marker (written atomically after every step)
    report.html                self-contained: loss curves, sample grids, metrics, cost, notebook links

**Validation first.** Every parameter is checked before any kernel starts: the pipeline config's
keys, each notebook's parameter names (against the notebook's ``parameters`` cell, via
``papermill.inspect_notebook``), their types and ranges, paths that must exist, every stage as a
``Stage`` built from its YAML plus overrides (``ValueError`` naming the field), that the stages'
resolutions were prepared and that chained stages share an architecture. The error names the
parameter (``prepare.limit``, ``stage_overrides.stage2.lr``, ...).

**Completion and resume.** A step is complete when ``pipeline_state.json`` records it as
complete with the same parameters, its executed notebook exists and holds no error output, and
its artefact exists: ``prepared.json`` of the prepared dataset (01), the stage's final checkpoint
(02), the executed notebook itself (03). A rerun of the same command skips complete steps and
resumes at the first incomplete one; the Trainer itself resumes from that stage's newest
checkpoint. A complete prepare or training step whose parameters changed is refused (choose another
run name); the evaluate step simply runs again.

**Failure.** The first failing notebook stops the pipeline: the message names the notebook, the
cell (its index, execution count and source) and the error; earlier outputs are kept.

Notebook helpers (the notebooks call these and add no logic of their own): ``notebook_setup``,
``parse_mapping``, ``stage_overrides``, ``log_lines`` and ``record`` / ``read_results``.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from .config import parse_yaml
from .io import fingerprint

KERNEL_NAME = "workbench"
NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"   # the repo's notebook templates
PREPARE_NOTEBOOK = "01_prepare_data.ipynb"
TRAIN_NOTEBOOK = "02_train_stage.ipynb"
EVALUATE_NOTEBOOK = "03_sample_and_evaluate.ipynb"
STATE_FILE = "pipeline_state.json"
STATE_FORMAT = 1
KERNEL_LOG_LEVEL = "--IPKernelApp.log_level=CRITICAL"   # no "running over TCP" / interrupt log lines per kernel
RESULT_PREFIX = "workbench-result: "           # record() prints one JSON line after it
RUNTIME_PARAMETERS = ("workdir", "threads")    # set by the pipeline for every notebook
UNFINGERPRINTED = (*RUNTIME_PARAMETERS, "print_every", "live")   # parameters that do not change a step's results
FREE_TYPED = ("resolutions", "source_options", "overrides")   # checked by their own parsers, not by default type
STAGE_PARAMETERS = ("run", "runs_dir", "data", "init_from")   # set by the pipeline for every stage


class PipelineConfigError(ValueError):
    """A bad pipeline parameter, found before any kernel starts; the message names it."""


class PipelineFailed(RuntimeError):
    """A notebook failed; ``step``, ``notebook``, ``cell_index``, ``source`` and ``error`` say where and why."""

    def __init__(self, message: str, *, step: str, notebook: Path, cell_index: int | None = None,
                 source: str | None = None, error: str | None = None):
        super().__init__(message)
        self.step, self.notebook, self.cell_index, self.source, self.error = step, notebook, cell_index, source, error


# ---------------------------------------------------------------------------------------------
#  Helpers the notebooks call
# ---------------------------------------------------------------------------------------------

_START_DIR: Path | None = None


def notebook_setup(workdir: str | os.PathLike = "..", threads: int = 0) -> Path:
    """Enter the project folder and set torch's thread count; returns the folder.

    A relative ``workdir`` is taken from the folder the kernel started in (a notebook in
    ``notebooks/`` uses ``".."``), so running the cell twice is harmless. ``threads > 0`` calls
    ``torch.set_num_threads`` (on a busy 2-core machine 1 thread can be much faster than 2).
    """
    global _START_DIR
    if _START_DIR is None:
        _START_DIR = Path.cwd()
    target = (_START_DIR / Path(workdir).expanduser()).resolve()
    if not target.is_dir():
        raise FileNotFoundError(f"workdir {str(target)!r} does not exist")
    os.chdir(target)
    if threads and int(threads) > 0:
        import torch

        torch.set_num_threads(int(threads))
    return target


def parse_mapping(value: str | dict | None, name: str = "overrides") -> dict:
    """A mapping parameter: a dict, or a YAML / JSON mapping string (``"{lr: 3e-4, steps: 10}"``); None -> {}."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return dict(value)
    if not isinstance(value, str):
        raise ValueError(f"{name}: expected a mapping or a YAML mapping string, got {value!r}")
    try:
        parsed = parse_yaml(value)        # JSON is YAML too; 1e-3 and 1e+30 read as floats
    except yaml.YAMLError as err:
        raise ValueError(f"{name}: not a YAML mapping ({err}); write it like \"{{lr: 3.0e-4, steps: 10}}\"") from None
    if parsed is None:
        return {}
    if not isinstance(parsed, dict):
        raise ValueError(f"{name}: expected a mapping like \"{{lr: 3.0e-4}}\", got {value!r}")
    return parsed


def stage_overrides(overrides: str | dict | None = None, **fields: Any) -> dict:
    """The ``Stage.from_yaml`` overrides of notebook 02: ``fields`` that are not None, plus the ``overrides`` mapping.

    A field given both ways is an error (it would be ambiguous which one wins).
    """
    extra = parse_mapping(overrides)
    given = {k: v for k, v in fields.items() if v is not None}
    both = sorted(set(given) & set(extra))
    if both:
        raise ValueError(f"overrides: {', '.join(both)} also given as a parameter; give each field once")
    return {**given, **extra}


def log_lines(every: int = 50, printer: Callable[[str], Any] | None = None) -> Callable:
    """A Trainer ``on_step`` callback printing one plain log line every ``every`` steps (and the first and last)."""
    every = max(1, int(every))
    out = printer or (lambda line: print(line, flush=True))

    def on_step(trainer, metrics: dict) -> None:
        step, total = metrics["step"], trainer.stage.steps
        if step == 1 or step % every == 0 or step == total:
            out(f"{trainer.stage.run}/{trainer.stage.name} step {step}/{total}  loss {metrics['loss']:.4f}  "
                f"lr {metrics['lr']:.2e}  {metrics['img_per_s']:.1f} img/s")
    return on_step


def record(**values: Any) -> None:
    """Print ``values`` as one JSON line that ``read_results`` (tests, the pipeline) reads back from the notebook."""
    print(RESULT_PREFIX + json.dumps(values, default=str), flush=True)


def read_results(notebook: str | os.PathLike) -> list[dict]:
    """Every ``record(...)`` of an executed notebook, in order."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    found = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stdout":
                for line in output.get("text", "").splitlines():
                    if line.startswith(RESULT_PREFIX):
                        found.append(json.loads(line[len(RESULT_PREFIX):]))
    return found


def notebook_errors(notebook: str | os.PathLike) -> list[dict]:
    """The error outputs of a notebook: ``[{"cell_index", "ename", "evalue", "source"}]`` (empty: none)."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    errors = []
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                errors.append({"cell_index": index, "ename": output.get("ename"), "evalue": output.get("evalue"),
                               "source": cell.get("source", "")})
    return errors


# ---------------------------------------------------------------------------------------------
#  The pipeline config
# ---------------------------------------------------------------------------------------------

@dataclass
class PipelineConfig:
    """``configs/demo/pipeline.yaml``: what the pipeline runs. Relative paths start at the folder it runs in."""

    run: str = "demo"                            # run name: everything goes to <runs_dir>/<run>/
    runs_dir: str = "runs"                       # where runs live
    prepare: dict = field(default_factory=dict)  # parameters of 01_prepare_data (absent: the notebook's defaults)
    stages: list = field(default_factory=list)   # stage YAMLs, trained in order; stage N+1 starts from stage N
    overrides: dict = field(default_factory=dict)        # Stage fields for every stage, e.g. {mixed_precision: bf16}
    stage_overrides: dict = field(default_factory=dict)  # per stage name: {stage2: {lr: 1.0e-4}}
    evaluate: dict = field(default_factory=dict)         # parameters of 03_sample_and_evaluate
    print_every: int = 50                        # a training log line every N steps
    threads: int = 0                             # torch threads in the kernels (0: torch's default)
    latent_downsample: int = 1                   # the codec's downsample factor, for the cost model (pixel: 1)
    notebooks: str | None = None                 # folder of the notebook templates (default: the repo's notebooks/)
    kernel: str = KERNEL_NAME                    # Jupyter kernel papermill runs

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.run

    @property
    def notebooks_dir(self) -> Path:
        return Path(self.notebooks) if self.notebooks else NOTEBOOKS_DIR

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, sets: list[str] | None = None) -> "PipelineConfig":
        """Load a pipeline YAML, apply ``--set a.b.c=value`` overrides, and check the top-level types."""
        path = Path(path)
        if not path.is_file():
            raise PipelineConfigError(f"--config: pipeline config {str(path)!r} not found")
        try:
            values = parse_yaml(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise PipelineConfigError(f"--config: {path} is not valid YAML: {err}") from None
        if not isinstance(values, dict):
            raise PipelineConfigError(f"--config: {path} must be a mapping of pipeline settings")
        for pair in sets or []:
            apply_set(values, pair)
        return cls.from_dict(values, where=str(path))

    @classmethod
    def from_dict(cls, values: dict, where: str = "pipeline config") -> "PipelineConfig":
        known = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in known:
                raise PipelineConfigError(f"{key}: unknown pipeline setting in {where}{_did_you_mean(key, known)}")
        values = {k: ({} if v is None and k in ("prepare", "overrides", "stage_overrides", "evaluate") else v)
                  for k, v in values.items()}
        config = cls(**values)
        config.check()
        return config

    def check(self) -> None:
        """Types and ranges of the pipeline's own settings."""
        for name in ("run", "runs_dir", "kernel"):
            _expect(isinstance(getattr(self, name), str) and getattr(self, name), name, "a non-empty string",
                    getattr(self, name))
        _expect("/" not in self.run and self.run not in (".", ".."), "run", "a name without '/'", self.run)
        for name in ("prepare", "overrides", "stage_overrides", "evaluate"):
            _expect(isinstance(getattr(self, name), dict), name, "a mapping", getattr(self, name))
        _expect(isinstance(self.stages, list) and self.stages and all(isinstance(s, str) for s in self.stages),
                "stages", "a non-empty list of stage YAML paths", self.stages)
        for name in ("print_every", "latent_downsample"):
            _expect(_is_int(getattr(self, name)) and getattr(self, name) >= 1, name, "an integer >= 1",
                    getattr(self, name))
        _expect(_is_int(self.threads) and self.threads >= 0, "threads", "an integer >= 0", self.threads)
        for stage, values in self.stage_overrides.items():
            _expect(isinstance(values, dict), f"stage_overrides.{stage}", "a mapping of Stage fields", values)


def apply_set(values: dict, pair: str) -> None:
    """Apply one ``a.b.c=value`` (value parsed as YAML) to a nested dict, creating mappings on the way."""
    if "=" not in pair:
        raise PipelineConfigError(f"--set expects key=value (e.g. prepare.limit=500), got {pair!r}")
    key, raw = pair.split("=", 1)
    parts = [p.strip() for p in key.strip().split(".")]
    if not all(parts):
        raise PipelineConfigError(f"--set {pair!r}: empty key part")
    try:
        value = parse_yaml(raw)
    except yaml.YAMLError as err:
        raise PipelineConfigError(f"--set {key}: value {raw!r} is not valid YAML ({err})") from None
    node = values
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise PipelineConfigError(f"--set {key}: {'.'.join(parts[:i + 1])} is not a mapping")
        node = child
    node[parts[-1]] = value


def _did_you_mean(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(known)})"


def _expect(ok: bool, name: str, expected: str, got: Any) -> None:
    if not ok:
        raise PipelineConfigError(f"{name}: expected {expected}, got {got!r}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------------------
#  Steps and their validation
# ---------------------------------------------------------------------------------------------

@dataclass
class Step:
    """One notebook run of the pipeline."""

    key: str                     # 01_prepare, 02_<stage>, 03_evaluate
    kind: str                    # prepare | train | evaluate
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
            raise PipelineConfigError(f"{where}: unknown parameter of {notebook.name}{_did_you_mean(name, known)}")
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
    from .data.prepared import parse_resolutions
    from .data.sources import parse_source_spec

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


def plan_steps(config: PipelineConfig, workdir: str | os.PathLike | None = None) -> list[Step]:
    """Validate everything and return the steps; raises ``PipelineConfigError`` naming the bad parameter.

    Nothing is started or written.
    """
    from .config import config_diff, to_dict
    from .data.prepared import parse_resolutions
    from .model import preset_config
    from .train import Stage
    from .train.trainer import RESOLUTION_FIELDS

    workdir = str(Path(workdir or os.getcwd()).resolve())
    _check_kernel(config.kernel)
    notebooks = config.notebooks_dir
    out_dir = config.run_dir / "notebooks"
    runtime = {"workdir": workdir, "threads": config.threads}

    # -------------------------------------------------------------- 01: prepare
    template = notebooks / PREPARE_NOTEBOOK
    declared = declared_parameters(template)
    check_parameters("prepare", config.prepare, declared, template)
    prepare_params = {**{k: v for k, v in declared.items() if k not in RUNTIME_PARAMETERS}, **config.prepare}
    _check_prepare_values(prepare_params)
    data = prepare_params["output"]
    resolutions = parse_resolutions(prepare_params["resolutions"])
    steps = [Step("01_prepare", "prepare", template, out_dir / "01_prepare.ipynb", {**runtime, **config.prepare},
                  label=f"prepare {prepare_params['source']} -> {data}", artefact=Path(data))]

    # -------------------------------------------------------------- 02: one per stage
    template = notebooks / TRAIN_NOTEBOOK
    declared = declared_parameters(template)
    for name in ("config", "overrides", *STAGE_PARAMETERS):
        if name not in declared:
            raise PipelineConfigError(f"notebooks: {template} does not declare the parameter {name!r}")
    for key in config.overrides:
        if key in ("run", "runs_dir", "data", "name"):
            raise PipelineConfigError(f"overrides.{key}: set by the pipeline (use the pipeline's run / runs_dir / "
                                      "prepare.output, and each stage YAML's name)")
    stages, names = [], []
    previous = None
    for index, yaml_path in enumerate(config.stages):
        where = f"stages[{index}]"
        if not Path(yaml_path).is_file():
            raise PipelineConfigError(f"{where}: stage config {yaml_path!r} not found")
        try:
            base = Stage.from_yaml(yaml_path)
        except (ValueError, FileNotFoundError) as err:
            raise PipelineConfigError(f"{where} ({yaml_path}): {err}") from None
        if base.name in names:
            raise PipelineConfigError(f"{where} ({yaml_path}): stage name {base.name!r} is used twice; stage names "
                                      "must be unique within a run")
        names.append(base.name)
        own = config.stage_overrides.get(base.name, {})
        section = f"stage_overrides.{base.name}"
        for key in own:
            if key in ("run", "runs_dir", "data", "name"):
                raise PipelineConfigError(f"{section}.{key}: set by the pipeline")
        overrides = {**config.overrides, **own}
        fixed = {"run": config.run, "runs_dir": config.runs_dir, "data": data}
        if previous is not None and "init_from" not in overrides:
            fixed["init_from"] = str(previous.stage_dir)            # the chain: stage N+1 starts from stage N
        try:
            stage = Stage.from_yaml(yaml_path, **{**overrides, **fixed})
        except (ValueError, FileNotFoundError) as err:
            raise PipelineConfigError(f"{_origin(str(err), own, config.overrides, section)} (stage {base.name}, "
                                      f"{yaml_path}): {err}") from None
        if stage.resolution not in resolutions:
            raise PipelineConfigError(f"prepare.resolutions: stage {stage.name} trains at "
                                      f"{stage.resolution} px but prepare makes {', '.join(map(str, resolutions))}")
        if previous is None and stage.init_from is not None and not Path(stage.init_from).exists():
            origin = _origin("'init_from'", own, config.overrides, section)
            origin = f"{yaml_path}: init_from" if origin == "stages" else origin
            raise PipelineConfigError(f"{origin}: {stage.init_from!r} does not exist (the first stage can only start "
                                      "from an existing stage folder or checkpoint)")
        if previous is not None and stage.init_from == str(previous.stage_dir):
            diff = {k: v for k, v in config_diff(to_dict(preset_config(previous.model, **previous.model_overrides)),
                                                  to_dict(preset_config(stage.model, **stage.model_overrides))).items()
                    if k not in RESOLUTION_FIELDS}
            if diff:
                fields = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
                raise PipelineConfigError(f"{section}.model_overrides: stage {stage.name} starts from {previous.name} "
                                          f"but has another architecture ({fields})")
        params = {**runtime, "config": yaml_path, **fixed, "print_every": config.print_every, "live": False}
        if "init_from" in overrides:
            params["init_from"] = overrides["init_from"]
        rest = {k: v for k, v in overrides.items() if k not in params}
        if rest:
            params["overrides"] = json.dumps(rest, sort_keys=True)
        check_parameters(f"notebook {TRAIN_NOTEBOOK}", {k: v for k, v in params.items() if k not in RUNTIME_PARAMETERS},
                         declared, template)
        label = (f"{stage.name}: {stage.steps} steps at {stage.resolution} px, mask {stage.mask_ratio:g}"
                 + (f", from {Path(stage.init_from).name}" if stage.init_from else ""))
        steps.append(Step(f"02_{stage.name}", "train", template, out_dir / f"02_{stage.name}.ipynb", params,
                          label=label, stage=stage.name, artefact=stage.stage_dir))
        stages.append(stage)
        previous = stage
    unknown = sorted(set(config.stage_overrides) - set(names))
    if unknown:
        raise PipelineConfigError(f"stage_overrides.{unknown[0]}: no such stage{_did_you_mean(unknown[0], names)}")

    # -------------------------------------------------------------- 03: evaluate
    template = notebooks / EVALUATE_NOTEBOOK
    declared = declared_parameters(template)
    check_parameters("evaluate", config.evaluate, declared, template)
    for key in ("run_dir", "stages"):
        if key in config.evaluate:
            raise PipelineConfigError(f"evaluate.{key}: set by the pipeline")
    params = {**runtime, **config.evaluate, "run_dir": str(config.run_dir), "stages": ",".join(names)}
    steps.append(Step("03_evaluate", "evaluate", template, out_dir / "03_evaluate.ipynb", params,
                      label=f"sample grids and metrics of {len(names)} stages"))
    return steps


def _origin(message: str, own: dict, common: dict, section: str) -> str:
    """Which pipeline setting a Stage error comes from: ``stage_overrides.<stage>.<field>``, ``overrides.<field>``
    or the stage YAML."""
    import re

    named = re.findall(r"Stage\.(\w+)|'(\w+)'", message)
    fields = [a or b for a, b in named]
    for name in fields:
        if name in own:
            return f"{section}.{name}"
        if name in common:
            return f"overrides.{name}"
    if "MicroDiTConfig" in message or "preset" in message:    # an error inside model / model_overrides
        for name in ("model_overrides", "model"):
            if name in own:
                return f"{section}.{name}"
            if name in common:
                return f"overrides.{name}"
    for name in own:
        if name in message:
            return f"{section}.{name}"
    for name in common:
        if name in message:
            return f"overrides.{name}"
    return "stages"


def _check_kernel(name: str) -> None:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        raise PipelineConfigError(f"kernel: the Jupyter kernel {name!r} is not installed; run "
                                  f"`workbench kernel install` (or `make setup`)") from None


# ---------------------------------------------------------------------------------------------
#  State: the completion marker
# ---------------------------------------------------------------------------------------------

class PipelineState:
    """``<run>/pipeline_state.json``: one record per step (status, parameters' fingerprint, times, result)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / STATE_FILE
        self.data = {"format": STATE_FORMAT, "steps": {}}
        if self.path.is_file():
            try:
                loaded = json.loads(self.path.read_text())
                if loaded.get("format") == STATE_FORMAT:
                    self.data = loaded
            except (OSError, json.JSONDecodeError):
                pass            # a damaged marker: every step counts as incomplete and is checked again

    @property
    def steps(self) -> dict:
        return self.data["steps"]

    def update(self, key: str, **values: Any) -> None:
        self.steps.setdefault(key, {}).update(values)
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=2, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def step_complete(step: Step, state: PipelineState) -> tuple[bool, str]:
    """Whether a step is complete (see the module docstring), and why not."""
    entry = state.steps.get(step.key, {})
    if entry.get("status") != "complete":
        return False, f"status {entry.get('status', 'not run')}"
    if entry.get("fingerprint") != step.fingerprint:        # only evaluate gets here: it simply runs again
        return False, "its parameters changed"
    if not step.output.is_file():
        return False, f"{step.output} is missing"
    if notebook_errors(step.output):
        return False, f"{step.output} holds an error"
    if step.kind == "prepare" and not (step.artefact / "prepared.json").is_file():
        return False, f"{step.artefact} is not a complete prepared dataset"
    if step.kind == "train":
        from .report import final_checkpoint

        if final_checkpoint(step.artefact) is None:
            return False, f"{step.artefact} has no final checkpoint"
    return True, "complete"


# ---------------------------------------------------------------------------------------------
#  Running
# ---------------------------------------------------------------------------------------------

@dataclass
class PipelineResult:
    run_dir: Path
    report: Path
    ran: list[str]
    skipped: list[str]
    seconds: float


def run_pipeline(config: PipelineConfig, *, stream: bool = True, printer: Callable[[str], Any] | None = None,
                 workdir: str | os.PathLike | None = None) -> PipelineResult:
    """Run the steps (validated first), resuming after complete ones; write ``report.html``.

    ``stream`` echoes the notebooks' output (training log lines) while they run. Raises
    ``PipelineConfigError`` (bad parameter, nothing started) or ``PipelineFailed`` (a notebook failed).
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    say = printer or (lambda line: print(line, flush=True))
    workdir = Path(workdir or os.getcwd()).resolve()
    steps = plan_steps(config, workdir)
    state = PipelineState(config.run_dir)
    changed = [(s, state.steps[s.key]) for s in steps
               if s.kind != "evaluate" and state.steps.get(s.key, {}).get("status") == "complete"
               and state.steps[s.key].get("fingerprint") != s.fingerprint]
    if changed:
        step, entry = changed[0]
        diffs = [k for k in set(step.parameters) | set(entry.get("parameters", {}))
                 if k not in UNFINGERPRINTED and step.parameters.get(k) != entry.get("parameters", {}).get(k)]
        raise PipelineConfigError(
            f"{step.key}: already complete in {config.run_dir} with other parameters ({', '.join(sorted(diffs))}); "
            f"choose another run name (--set run=NAME) or delete {config.run_dir} to start again")
    config.run_dir.mkdir(parents=True, exist_ok=True)
    (config.run_dir / "pipeline.yaml").write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))

    start, ran, skipped = time.perf_counter(), [], []
    resuming = False
    total = len(steps)
    for number, step in enumerate(steps, 1):
        head = f"[{number}/{total}] {step.key}"
        done, why = step_complete(step, state) if not resuming else (False, "an earlier step ran again")
        if done:
            skipped.append(step.key)
            say(f"{head}: complete, kept from the previous run ({step.output})")
            continue
        resuming = True
        again = f" (again: {why})" if step.key in state.steps else ""
        say(f"{head}: {step.label} ...{again}")
        step.output.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        state.update(step.key, status="running", stage=step.stage, notebook=str(step.output),
                     fingerprint=step.fingerprint, parameters=step.parameters, started_at=time.time(), error=None)
        try:
            pm.execute_notebook(str(step.template), str(step.output), parameters=step.parameters,
                                kernel_name=config.kernel, progress_bar=False, log_output=False,
                                stdout_file=_Echo(sys.stdout) if stream else None,
                                stderr_file=sys.stderr if stream else None,
                                cwd=str(workdir), extra_arguments=[KERNEL_LOG_LEVEL])
        except PapermillExecutionError as err:
            raise _failed(step, state, t0, err.cell_index, err.exec_count, err.source, f"{err.ename}: {err.evalue}")
        except Exception as err:         # the kernel died or could not start, the notebook could not be written
            raise _failed(step, state, t0, None, None, None, f"{type(err).__name__}: {err}")
        seconds = time.perf_counter() - t0
        results = read_results(step.output)
        state.update(step.key, status="complete", finished_at=time.time(), seconds=round(seconds, 1),
                     result=results[-1] if results else None)
        ran.append(step.key)
        say(f"{head}: done in {seconds:.1f} s{_result_note(results)} -> {step.output}")

    report = write_run_report(config, steps, state)
    elapsed = time.perf_counter() - start
    say(f"pipeline {config.run}: {len(ran)} step(s) run, {len(skipped)} kept, in {elapsed:.1f} s; report: {report}")
    return PipelineResult(config.run_dir, report, ran, skipped, elapsed)


class _Echo:
    """A notebook's stdout echoed to ours, without the ``record`` lines (they are for machines)."""

    def __init__(self, target):
        self.target, self.pending = target, ""

    def write(self, text: str) -> None:
        lines = (self.pending + text).split("\n")
        self.pending = lines.pop()
        kept = [line for line in lines if not line.startswith(RESULT_PREFIX)]
        if kept:
            self.target.write("\n".join(kept) + "\n")

    def flush(self) -> None:
        if self.pending and not self.pending.startswith(RESULT_PREFIX):
            self.target.write(self.pending)
            self.pending = ""
        self.target.flush()


def _result_note(results: list[dict]) -> str:
    last = results[-1] if results else {}
    if isinstance(last.get("final_loss"), (int, float)):
        return f" (step {last.get('step')}, final loss {last['final_loss']:.4f})"
    if "written" in last:
        return f" ({last['written']} rows)"
    return ""


def _failed(step: Step, state: PipelineState, t0: float, cell_index, exec_count, source, error: str) -> PipelineFailed:
    state.update(step.key, status="failed", finished_at=time.time(), seconds=round(time.perf_counter() - t0, 1),
                 error=error, cell_index=cell_index)
    lines = [f"pipeline stopped: {step.key} failed in notebook {step.output}"]
    try:                                 # the index in the saved notebook (papermill adds cells before it)
        saved = notebook_errors(step.output) if step.output.is_file() else []
    except Exception:                    # an unreadable partial notebook: keep papermill's index
        saved = []
    if saved:
        cell_index, source = saved[0]["cell_index"], source or saved[0]["source"]
    if cell_index is not None:
        lines.append(f"  failing cell: cell {cell_index} of {step.output.name} (In [{exec_count}]):")
        excerpt = (source or "").strip().splitlines()
        lines += [f"    | {line}" for line in excerpt[:12]] + (["    | ..."] if len(excerpt) > 12 else [])
    lines.append(f"  error: {error}")
    lines.append("  the outputs of earlier steps are kept; fix the cause and run the same command again to resume "
                 f"at {step.key}")
    return PipelineFailed("\n".join(lines), step=step.key, notebook=step.output, cell_index=cell_index,
                          source=source, error=error)


def write_run_report(config: PipelineConfig, steps: list[Step], state: PipelineState) -> Path:
    """``<run>/report.html`` from the run's stage folders, notebooks and pipeline state."""
    from .report import write_report

    rows = [{"step": s.key, "status": state.steps.get(s.key, {}).get("status"),
             "seconds": state.steps.get(s.key, {}).get("seconds"), "notebook": str(s.output)} for s in steps]
    prepared = next((s.artefact for s in steps if s.kind == "prepare"), None)
    return write_report(config.run_dir, names=[s.stage for s in steps if s.stage],
                        notebooks=[(s.key, str(s.output)) for s in steps if s.output.is_file()], steps=rows,
                        prepared=prepared, latent_downsample=config.latent_downsample)


# ---------------------------------------------------------------------------------------------
#  CLI: `workbench pipeline ...`
# ---------------------------------------------------------------------------------------------

def add_pipeline_arguments(parser) -> None:
    """Add the ``workbench pipeline`` options to an ``argparse`` (sub)parser."""
    parser.add_argument("--config", required=True, help="a pipeline YAML, e.g. configs/demo/pipeline.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a pipeline setting; dotted keys reach into sections, e.g. prepare.limit=500, "
                             "overrides.steps=50, stage_overrides.stage2.lr=1e-4 (repeatable)")
    parser.add_argument("--quiet", action="store_true", help="only the progress lines, not the notebooks' output")
    parser.add_argument("--check", action="store_true", help="validate every parameter and exit")


def run_pipeline_cli(args) -> int:
    """Run the pipeline from parsed ``add_pipeline_arguments`` options; returns the exit status."""
    config = PipelineConfig.from_yaml(args.config, args.set)
    if args.check:
        steps = plan_steps(config)
        for step in steps:
            print(f"{step.key}: {step.label}")
        print(f"pipeline {config.run}: {len(steps)} steps, parameters valid")
        return 0
    try:
        run_pipeline(config, stream=not args.quiet)
    except PipelineFailed as err:
        print(str(err), file=sys.stderr, flush=True)
        return 1
    return 0
