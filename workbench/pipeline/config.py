"""The pipeline config (``configs/demo/pipeline.yaml``): its fields, ``--set a.b.c=value``, type checks."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import InputError
from ..config import configs_dir, did_you_mean, find_config_file, parse_yaml, read_yaml_mapping, shipped_dir
from ..train.stages import FOLDER_NAME_RULE, is_single_path_component

KERNEL_NAME = "workbench"

class PipelineConfigError(InputError):
    """A bad pipeline parameter, found before any kernel starts; the message names it."""


def templates_dir() -> Path:
    """The notebook templates: ``notebooks/`` of the checkout, shipped in the wheel as ``workbench/templates``."""
    return shipped_dir("templates", "notebooks")


def resolve_config_path(spec: str | os.PathLike) -> Path:
    """A pipeline YAML: a path, or the name of a shipped one (``demo`` -> ``configs/demo/pipeline.yaml``)."""
    path = Path(spec)
    if path.is_file() or path.suffix in (".yaml", ".yml") or os.sep in str(spec):
        return find_config_file(path, "pipeline config")     # the working folder, then the shipped configs
    shipped = configs_dir() / str(spec) / "pipeline.yaml"
    if shipped.is_file():
        return shipped
    known = sorted(p.parent.name for p in configs_dir().glob("*/pipeline.yaml"))
    raise PipelineConfigError(f"--config: {str(spec)!r} is neither a pipeline YAML nor a shipped pipeline "
                              f"({', '.join(known)})")


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
    ablate: dict = field(default_factory=dict)   # parameters of 06_ablations; empty: no ablation step
    print_every: int = 50                        # a training log line every N steps
    threads: int = 0                             # torch threads in the kernels (0: torch's default)
    latent_downsample: int = 1                   # the codec's downsample factor, for the cost model (pixel: 1)
    notebooks: str | None = None                 # folder of the notebook templates (default: the shipped ones)
    kernel: str = KERNEL_NAME                    # Jupyter kernel papermill runs

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.run

    @property
    def notebooks_dir(self) -> Path:
        return Path(self.notebooks) if self.notebooks else templates_dir()

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, sets: list[str] | None = None) -> PipelineConfig:
        """Load a pipeline YAML (a path, or a shipped pipeline's name such as ``demo``), apply ``--set a.b.c=value``
        overrides, and check the top-level types. Stage YAMLs are found from the working folder, else beside
        the pipeline YAML (so a shipped pipeline runs from anywhere)."""
        path = resolve_config_path(path)
        if not path.is_file():
            raise PipelineConfigError(f"--config: pipeline config {str(path)!r} not found")
        values = read_yaml_mapping(path, "pipeline settings", PipelineConfigError)
        for pair in sets or []:
            apply_set(values, pair)
        if isinstance(values.get("stages"), list):
            values["stages"] = [s if not isinstance(s, str) or Path(s).is_file() or not (path.parent / s).is_file()
                                else str(path.parent / s) for s in values["stages"]]
        return cls.from_dict(values, where=str(path))

    @classmethod
    def from_dict(cls, values: dict, where: str = "pipeline config") -> PipelineConfig:
        known = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in known:
                raise PipelineConfigError(f"{key}: unknown pipeline setting in {where}{did_you_mean(key, known)}")
        values = {k: ({} if v is None and k in ("prepare", "overrides", "stage_overrides", "evaluate", "ablate") else v)
                  for k, v in values.items()}
        config = cls(**values)
        config.check()
        return config

    def check(self) -> None:
        """Types and ranges of the pipeline's own settings."""
        for name in ("run", "runs_dir", "kernel"):
            _expect(isinstance(getattr(self, name), str) and getattr(self, name), name, "a non-empty string",
                    getattr(self, name))
        _expect(is_single_path_component(self.run), "run", FOLDER_NAME_RULE, self.run)
        for name in ("prepare", "overrides", "stage_overrides", "evaluate", "ablate"):
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


def _expect(ok: bool, name: str, expected: str, got: Any) -> None:
    if not ok:
        raise PipelineConfigError(f"{name}: expected {expected}, got {got!r}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
