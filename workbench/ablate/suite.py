"""Ablation suites: a base recipe, named variants, a budget in training FLOPs, and how to score them.

A suite is a YAML file (the built-in ones ship in ``workbench/ablate/suites/``)::

    name: masking
    data: {n: 8000, val_n: 256, resolution: 16}     # shapes scenes, prepared once for every run
    base: {model: nano, lr: 1.0e-3, ...}            # Stage fields shared by every run
    finetune: 0.1                                   # the last 10% of the budget unmasked (0: none)
    evaluate: {samples_per_prompt: 1, steps: 12, fid_samples: 64}
    variants:
      c_deferred_75: {mask_ratio: 0.75}
      b_naive_75: {mask_ratio: 0.75, model_overrides: {mixer_depth: 0}}

Each variant's steps are solved from the analytic FLOP count (``workbench.eval.cost``), so every
variant of a suite spends the same training FLOPs::

    suite = Suite.load("masking")
    suite.stages("c_deferred_75", budget=20e12, seed=0)    # [(Stage, flops), ...]: main phase, finetune
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..config import check_known_keys, parse_yaml
from ..eval.cost import StagePlan
from ..train import Stage

BUILT_IN = ("masking", "moe", "recipe")


@dataclass
class Suite:
    """One ablation suite (see the module docstring for the YAML form)."""

    name: str
    variants: dict                                   # variant name -> Stage / model_overrides changes
    base: dict = field(default_factory=dict)         # Stage fields of every run
    data: dict = field(default_factory=lambda: {"n": 8000, "val_n": 256, "resolution": 16})
    finetune: float = 0.0                            # fraction of the budget spent unmasked at the end
    evaluate: dict = field(default_factory=lambda: {"samples_per_prompt": 1, "steps": 12, "fid_samples": 64})

    def __post_init__(self) -> None:
        if not isinstance(self.variants, dict) or not self.variants:
            raise ValueError(f"suite {self.name}: 'variants' must map names to Stage changes")
        if not 0.0 <= float(self.finetune) < 1.0:
            raise ValueError(f"suite {self.name}: finetune must be a fraction in [0, 1), got {self.finetune!r}")
        check_known_keys(_DataSpec, self.data, what=f"suite {self.name} data")
        check_known_keys(_EvalSpec, self.evaluate, what=f"suite {self.name} evaluate")
        for variant in self.variants:                # every run's Stage validates now, not hours into the suite
            self.stages(variant, budget=1e15, seed=0)

    @classmethod
    def load(cls, spec: str | Path) -> "Suite":
        """A built-in suite by name (``masking``, ``moe``, ``recipe``) or a YAML file of the same form."""
        path = Path(spec)
        if str(spec) in BUILT_IN:
            text = resources.files("workbench.ablate").joinpath("suites").joinpath(f"{spec}.yaml").read_text()
        elif path.is_file():
            text = path.read_text()
        else:
            raise FileNotFoundError(f"no suite {spec!r}: use one of {', '.join(BUILT_IN)} or a YAML file path")
        values = parse_yaml(text) or {}
        check_known_keys(cls, values, what="suite")
        return cls(**values)

    def quick(self) -> "Suite":
        """The same variants on 96 scenes, a depth-2 width-64 backbone and a 2-step protocol: a smoke test."""
        import dataclasses

        overrides = {**self.base.get("model_overrides", {}), "depth": 2, "width": 64, "mixer_width": 64}
        return dataclasses.replace(self, base={**self.base, "model_overrides": overrides},
                                   data={**self.data, "n": 96, "val_n": 32},
                                   evaluate={"samples_per_prompt": 1, "steps": 2, "cfg_scale": 3.0, "fid_samples": 8})

    def plan(self, budget: float) -> str:
        """One line per variant: its phases' steps and FLOPs at ``budget`` (what equal compute buys each)."""
        lines = []
        for variant in self.variants:
            phases = ", ".join(f"{s.name}: {s.steps} steps, {f / 1e12:.3g} TFLOP"
                               for s, f in self.stages(variant, budget, 0))
            lines.append(f"{variant:<20} {phases}")
        return "\n".join(lines)

    def stage_fields(self, variant: str, seed: int) -> dict:
        """The variant's Stage fields: base, then the variant's changes (``model_overrides`` merged)."""
        if variant not in self.variants:
            raise ValueError(f"suite {self.name} has no variant {variant!r} (it has {', '.join(self.variants)})")
        changes = dict(self.variants[variant] or {})
        fields = {**self.base, **changes, "seed": seed, "resolution": self.data.get("resolution", 16)}
        fields["model_overrides"] = {**self.base.get("model_overrides", {}), **changes.get("model_overrides", {})}
        return fields

    def stages(self, variant: str, budget: float, seed: int, runs_dir: str = "runs/ablate",
               data: str = "data/prepared/ablate") -> list[tuple[Stage, float]]:
        """``[(main stage, its FLOPs), (finetune stage, its FLOPs)]`` spending ``budget`` training FLOPs together."""
        fields = self.stage_fields(variant, seed)
        run = f"{self.name}-{variant}-s{seed}"
        phases = [("main", fields, budget * (1.0 - self.finetune))]
        if self.finetune > 0:
            phases.append(("finetune", {**fields, "mask_ratio": 0.0, "warmup_steps": 0}, budget * self.finetune))
        out, spent = [], 0.0
        for i, (name, values, flops) in enumerate(phases):
            if i == len(phases) - 1:
                flops = budget - spent                   # the last phase absorbs the earlier ones' rounding
            probe = Stage(**{**values, "name": name, "run": run, "runs_dir": runs_dir, "data": data, "steps": 1})
            per_step = _plan(probe).flops_per_step()
            steps = max(1, round(flops / per_step))
            init = {"init_from": str(Path(runs_dir) / run / "main"), "init_mode": "weights"} if name == "finetune" else {}
            stage = probe.replace(steps=steps, checkpoint_every=0, sample_every=0, **init)
            out.append((stage, steps * per_step))
            spent += steps * per_step
        return out


def _plan(stage: Stage) -> StagePlan:
    from ..eval.cost import stage_plan

    return stage_plan(stage)


@dataclass
class _DataSpec:
    n: int = 8000                 # training scenes (shapes, train split)
    val_n: int = 256              # held-out scenes (shapes, val split)
    resolution: int = 16          # pixels


@dataclass
class _EvalSpec:
    samples_per_prompt: int = 1   # compositional score: images per eval prompt
    steps: int = 12               # Heun steps per sample
    cfg_scale: float = 3.0        # guidance for the eval samples
    fid_samples: int = 64         # FID-proxy samples (0: not computed)
