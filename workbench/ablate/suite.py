"""Ablation suites: a base recipe, named variants, a budget in training FLOPs, and how to score them.

A suite is a YAML file (the built-in ones ship in ``workbench/ablate/suites/``)::

    name: masking
    data: {n: 8000, val_n: 256, resolution: 16}     # shapes scenes, prepared once for every run
    base: {model: nano, lr: 1.0e-3, ...}            # Stage fields shared by every run
    finetune: 0.1                                   # the last 10% of the budget unmasked (0: none)
    finetune_overrides: {}                          # Stage fields of that phase beyond the defaults below
    evaluate: {samples_per_prompt: 1, steps: 12, fid_samples: 64}
    variants:
      c_deferred_75: {mask_ratio: 0.75}
      b_naive_75: {mask_ratio: 0.75, model_overrides: {mixer_depth: 0}}
      singles: {template_weights: {single: 0.7, pair: 0.1, position: 0.1, count: 0.1}}   # the training scenes' mix

``template_weights`` (in ``base`` or a variant) is the one field that is not a Stage's: the caption-template mix
of the variant's training scenes (default: the shapes world's, 40% single objects), prepared once per mix. The
held-out scenes keep the default mix, so the held-out loss stays comparable across variants.

Each variant's steps are solved from the analytic FLOP count (``workbench.eval.cost``: 3 x forward
FLOPs per step), so every variant of a suite spends the same training FLOPs, main phase and
finetune together::

    suite = Suite.load("masking")
    suite.stages("c_deferred_75", budget=20e12, seed=0)    # [(Stage, flops), ...]: main phase, finetune
    print(suite.plan(20e12))                               # the steps each variant gets

The finetune phase continues the main phase as the paper's stage 2 does (configs/paper/stage2.yaml):
unmasked, a constant LR equal to the main phase's final LR, the optimiser state and the EMA carried.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..config import check_known_keys, parse_yaml
from ..data.shapes import check_template_weights
from ..eval.cost import StagePlan
from ..train import Stage
from ..errors import InputError, MissingFileError

BUILT_IN = tuple(sorted(entry.name.removesuffix(".yaml")                      # the YAML files shipped in suites/
                        for entry in resources.files("workbench.ablate").joinpath("suites").iterdir()
                        if entry.name.endswith(".yaml")))
DATA_FIELDS = ("template_weights",)   # variant fields that change the training scenes, not the Stage
SET_BY_SUITE = ("name", "run", "runs_dir", "data", "steps", "seed", "resolution", "init_from", "init_mode")
FINETUNE_SEED = 1000          # the finetune phase of seed s draws its data order and noise with seed 1000 + s


@dataclass
class _DataSpec:
    n: int = 8000                 # training scenes (shapes, train split)
    val_n: int = 256              # held-out scenes (shapes, val split)
    resolution: int = 16          # pixels


@dataclass
class _EvalSpec:
    samples_per_prompt: int = 1   # compositional score: images per eval prompt (55 prompts)
    steps: int = 12               # Heun steps per sample
    cfg_scale: float = 3.0        # guidance for the eval samples
    fid_samples: int = 64         # FID-proxy samples (0: not computed)
    probe_n: int = 96             # single-object val scenes of the shape probe (0: not computed)
    val_n: int = 256              # held-out rows scored by the denoising loss (at most the data's val_n)


@dataclass
class Suite:
    """One ablation suite (see the module docstring for the YAML form).

    Example::

        suite = Suite.load("masking")            # or Suite.load("my_suite.yaml")
        suite.variants                           # {"a_no_mask": {"mask_ratio": 0.0}, ...}
        suite.quick().plan(0.4e12)               # the smoke-test form, as ``--quick`` runs it
    """

    name: str
    variants: dict                                   # variant name -> Stage / model_overrides changes
    base: dict = field(default_factory=dict)         # Stage fields of every run
    data: dict = field(default_factory=dict)         # _DataSpec fields
    finetune: float = 0.0                            # fraction of the budget spent unmasked at the end
    finetune_overrides: dict = field(default_factory=dict)   # Stage fields of the finetune phase
    evaluate: dict = field(default_factory=dict)     # _EvalSpec fields

    def __post_init__(self) -> None:
        what = f"suite {self.name!r}"
        if not isinstance(self.variants, dict) or not self.variants:
            raise InputError(f"{what}: 'variants' must map variant names to Stage changes, e.g. "
                             f"{{a: {{mask_ratio: 0.0}}}}")
        for key, value in (("base", self.base), ("data", self.data), ("evaluate", self.evaluate),
                           ("finetune_overrides", self.finetune_overrides)):
            if not isinstance(value, dict):
                raise InputError(f"{what}: '{key}' must be a mapping, got {value!r}")
        if isinstance(self.finetune, bool) or not isinstance(self.finetune, (int, float)) or \
                not 0.0 <= self.finetune < 1.0:
            raise InputError(f"{what}: finetune must be the budget's fraction spent unmasked at the end, in [0, 1) "
                             f"(0: none), got {self.finetune!r}")
        check_known_keys(_DataSpec, self.data, what=f"{what} data")
        check_known_keys(_EvalSpec, self.evaluate, what=f"{what} evaluate")
        self.data = dataclasses.asdict(_DataSpec(**self.data))
        for key, value in self.data.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{what}: data.{key} must be a positive integer, got {value!r}")
        self.evaluate = dataclasses.asdict(_EvalSpec(**self.evaluate))
        for key, value in self.evaluate.items():
            least = 0 if key in ("fid_samples", "probe_n") else 1
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < least:
                raise InputError(f"{what}: evaluate.{key} must be a positive number, got {value!r}")
        self._check_stage_keys("base", self.base)
        self._check_stage_keys("finetune_overrides", self.finetune_overrides)
        for variant, changes in self.variants.items():
            if not isinstance(changes, (dict, type(None))):
                raise InputError(f"{what}: variant {variant!r} must be a mapping of Stage changes, got {changes!r}")
            self._check_stage_keys(f"variant {variant!r}", changes or {})
            try:                                     # every run's Stage validates now, not hours into the suite
                self.stages(variant, budget=1e15, seed=0)
            except ValueError as err:
                raise InputError(f"{what} variant {variant!r}: {err}") from None

    def _check_stage_keys(self, where: str, values: dict) -> None:
        if "template_weights" in values:
            try:
                check_template_weights(values["template_weights"])
            except ValueError as err:
                raise InputError(f"suite {self.name!r} {where}: {err}") from None
        values = {k: v for k, v in values.items() if k not in DATA_FIELDS}
        check_known_keys(Stage, values, what=f"suite {self.name!r} {where}: Stage")
        for key in SET_BY_SUITE:
            if key in values:
                raise InputError(f"suite {self.name!r} {where}: '{key}' is set by the suite (budget, seeds, data); "
                                 f"remove it")

    @classmethod
    def load(cls, spec: str | Path) -> Suite:
        """A built-in suite by name (``masking``, ``moe``, ``optim``, ``recipe``) or a YAML file of the same form."""
        path = Path(spec)
        if str(spec) in BUILT_IN:
            text = resources.files("workbench.ablate").joinpath("suites").joinpath(f"{spec}.yaml").read_text()
        elif path.is_file():
            text = path.read_text()
        else:
            raise MissingFileError(f"no suite {str(spec)!r}: use one of {', '.join(BUILT_IN)} or a suite YAML file")
        values = parse_yaml(text) or {}
        if not isinstance(values, dict):
            raise InputError(f"suite {spec}: expected a mapping with name, base and variants")
        check_known_keys(cls, values, what=f"suite {spec}")
        for key in ("name", "variants"):
            if key not in values:
                raise InputError(f"suite {spec}: '{key}' is missing")
        return cls(**values)

    def to_dict(self) -> dict:
        """The suite as plain data (what ``<out>/ablate.json`` records)."""
        return dataclasses.asdict(self)

    def quick(self) -> Suite:
        """The same variants on 96 scenes (batches of at most 32), a depth-3 width-64 backbone (MoE in block 2) and a
        2-step protocol: a smoke test of the whole suite in about a minute (``workbench ablate --quick``)."""
        overrides = {**self.base.get("model_overrides", {}), "depth": 3, "width": 64, "mixer_width": 64}
        variants = {}
        for name, changes in self.variants.items():      # a variant's own widths shrink with the base's
            changes = dict(changes or {})
            own = dict(changes.get("model_overrides", {}))
            heads = own["width"] // own["head_dim"] if "head_dim" in own and "width" in own else None
            for key in ("width", "mixer_width"):
                if key in own:
                    own[key] = max(32, own[key] // 2 // 32 * 32)
            if heads:                                     # keep the variant's number of heads
                own["head_dim"] = own["width"] // heads
            if "depth" in own:
                own["depth"] = max(1, min(own["depth"], 3))
            for key in ("global_batch", "micro_batch"):  # 96 scenes: at most 32 a batch
                if key in changes:
                    changes[key] = min(changes[key], 32)
            variants[name] = {**changes, "model_overrides": own} if own else changes
        return dataclasses.replace(self, name=self.name, variants=variants,
                                   base={**self.base, "model_overrides": overrides, "warmup_steps": 5},
                                   data={**self.data, "n": 96, "val_n": 32},
                                   evaluate={"samples_per_prompt": 1, "steps": 2, "cfg_scale": 3.0, "fid_samples": 8,
                                             "probe_n": 12, "val_n": 32})

    def only(self, *variants: str) -> Suite:
        """The same suite with just ``variants`` (in that order), e.g. a small live rerun of two of them::

            Suite.load("masking").only("b_naive_75", "c_deferred_75")
        """
        missing = [v for v in variants if v not in self.variants]
        if missing or not variants:
            raise InputError(f"suite {self.name} has no variant {', '.join(map(repr, missing)) or '(none given)'} "
                             f"(it has {', '.join(self.variants)})")
        return dataclasses.replace(self, variants={v: self.variants[v] for v in variants})

    def plan(self, budget: float) -> str:
        """One line per variant: its phases' steps and FLOPs at ``budget`` (what equal compute buys each)."""
        lines = []
        for variant in self.variants:
            phases = ", ".join(f"{s.name}: {s.steps} steps, {f / 1e12:.3g} TFLOP"
                               for s, f in self.stages(variant, budget, 0))
            lines.append(f"{variant:<20} {phases}")
        return "\n".join(lines)

    def _fields(self, variant: str) -> dict:
        if variant not in self.variants:
            raise InputError(f"suite {self.name} has no variant {variant!r} (it has {', '.join(self.variants)})")
        changes = dict(self.variants[variant] or {})
        fields = {**self.base, **changes}
        fields["model_overrides"] = {**self.base.get("model_overrides", {}), **changes.get("model_overrides", {})}
        return fields

    def stage_fields(self, variant: str, seed: int) -> dict:
        """The variant's Stage fields: base, then the variant's changes (``model_overrides`` merged)."""
        fields = {k: v for k, v in self._fields(variant).items() if k not in DATA_FIELDS}
        return {**fields, "seed": seed, "resolution": self.data["resolution"]}

    def training_mix(self, variant: str) -> dict | None:
        """The caption-template mix of the variant's training scenes (None: the shapes world's default)."""
        return self._fields(variant).get("template_weights")

    def finetune_fields(self, fields: dict, seed: int) -> dict:
        """The finetune phase's Stage fields: unmasked, constant LR at the main phase's final LR, optimiser and
        EMA carried (a fixed EMA decay continuing the main phase's average), then ``finetune_overrides``."""
        main = Stage(**{**fields, "steps": 1})
        final_lr = main.lr * (main.final_lr_fraction if main.schedule == "cosine" else 1.0)
        return {**fields, "mask_ratio": 0.0, "schedule": "constant", "lr": final_lr, "warmup_steps": 0,
                "ema_power": 0.0, "ema_start": 0, "seed": FINETUNE_SEED + seed, **self.finetune_overrides}

    def stages(self, variant: str, budget: float, seed: int, runs_dir: str = "runs/ablate",
               data: str = "data/prepared/ablate") -> list[tuple[Stage, float]]:
        """``[(main stage, its FLOPs), (finetune stage, its FLOPs)]`` spending ``budget`` training FLOPs together."""
        fields = self.stage_fields(variant, seed)
        run = f"{self.name}-{variant}-s{seed}"
        phases = [("main", fields, budget * (1.0 - self.finetune))]
        if self.finetune > 0:
            phases.append(("finetune", self.finetune_fields(fields, seed), budget * self.finetune))
        out, spent = [], 0.0
        for i, (name, values, flops) in enumerate(phases):
            if i == len(phases) - 1:
                flops = budget - spent                   # the last phase absorbs the earlier ones' rounding
            probe = Stage(**{**values, "name": name, "run": run, "runs_dir": runs_dir, "data": data, "steps": 1})
            per_step = _plan(probe).flops_per_step()
            steps = max(1, round(flops / per_step))
            init = {"init_from": str(Path(runs_dir) / run / "main"), "init_mode": "full"} if name == "finetune" else {}
            # a checkpoint every ~1/8 of the phase, so a kill -9 loses little of a run
            stage = probe.replace(steps=steps, checkpoint_every=max(25, steps // 8), sample_every=0, **init)
            out.append((stage, steps * per_step))
            spent += steps * per_step
        return out


def _plan(stage: Stage) -> StagePlan:
    from ..eval.cost import stage_plan

    return stage_plan(stage)
