"""The cost model: training FLOPs from ``MicroDiT.flops``, GPU-hours at an assumed MFU, dollars.

The paper's headline (Sehwag et al. 2025, its cost estimate): **$1,890** = 2.6 days x 24 h x 8 H100 =
499.2 GPU-hours at about $3.79 per GPU-hour, for 250K + 30K + 50K + 5K steps at batch 2048.

Assumptions, stated once:

- a training step costs 3x the forward FLOPs (forward + backward with two matmuls per forward
  one); the optimiser, EMA and data loading are not counted;
- ``MicroDiT.flops`` counts 2 FLOPs per multiply-add of every matmul / conv / attention product
  (within 2 % of ``torch.utils.flop_counter``);
- an H100 SXM peaks at 989.4 dense bf16 TFLOP/s;
- the MFU (model FLOPs utilisation) defaults to the one the paper's own cost implies under this
  FLOP count (``paper_implied_mfu()``, about 18 %), so projecting the paper's stages gives back
  its $1,890.

Example::

    from workbench.eval.cost import paper_cost_table, project, stage_plan
    rows, total = paper_cost_table()            # per stage FLOPs, GPU-hours, dollars; total ~ $1,890
    plan = [stage_plan(Stage.from_yaml(p)) for p in ["configs/demo/stage1.yaml"]]
    project(plan, gpus=8)["total"]["dollars"]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

H100_BF16_PEAK_FLOPS = 989.4e12        # dense bf16 FLOP/s of one H100 SXM
PRICE_PER_GPU_HOUR = 3.79              # the paper's implied H100 price, $ per GPU-hour
PAPER_DOLLARS = 1890.0                 # the paper's training cost
PAPER_DAYS, PAPER_GPUS = 2.6, 8        # 2.6 days on one 8xH100 node
PAPER_GPU_HOURS = PAPER_DAYS * 24 * PAPER_GPUS   # 499.2


@dataclass(frozen=True)
class StagePlan:
    """What one training stage costs to compute: the model, the latent grid, masking, steps, batch."""

    name: str
    preset: str                        # MicroDiT preset
    latent_side: int                   # latent grid side (pixels / codec downsample)
    mask_ratio: float
    steps: int
    global_batch: int
    model_overrides: tuple = ()        # (key, value) pairs of MicroDiTConfig overrides

    def flops_per_step(self) -> float:
        """Training FLOPs of one optimiser step: 3 x forward FLOPs at ``global_batch``."""
        return 3.0 * forward_flops(self.preset, self.latent_side, self.mask_ratio, self.global_batch,
                                   dict(self.model_overrides))

    def total_flops(self) -> float:
        """Training FLOPs of the whole stage."""
        return self.flops_per_step() * self.steps


# the paper's four training stages: MicroDiT_XL_2 on 32x32 / 64x64 SDXL latents
PAPER_STAGES = (
    StagePlan("stage1", "xl_2", 32, 0.75, 250_000, 2048),
    StagePlan("stage2", "xl_2", 32, 0.0, 30_000, 2048),
    StagePlan("stage3", "xl_2", 64, 0.75, 50_000, 2048, (("pos_interp_scale", 2.0), ("sample_size", 64))),
    StagePlan("stage4", "xl_2", 64, 0.0, 5_000, 2048, (("pos_interp_scale", 2.0), ("sample_size", 64))),
)


def forward_flops(preset: str, latent_side: int, mask_ratio: float, batch: int, overrides: dict | None = None) -> float:
    """``MicroDiT.flops`` of a preset, built on the meta device (no memory, instant even for xl_2)."""
    import torch

    from ..model import MicroDiT

    with torch.device("meta"):
        model = MicroDiT.from_preset(preset, **(overrides or {}))
    return float(model.flops(latent_side, mask_ratio, batch))


def stage_plan(stage, latent_downsample: int = 1) -> StagePlan:
    """The :class:`StagePlan` of a ``workbench.train.Stage`` (pixel codec: ``latent_downsample=1``; SDXL VAE: 8)."""
    return StagePlan(stage.name, stage.model, stage.resolution // latent_downsample, stage.mask_ratio, stage.steps,
                     stage.global_batch, tuple(sorted(stage.model_overrides.items())))


def stage_plans(paths, latent_downsample: int = 1) -> list[StagePlan]:
    """:class:`StagePlan` of stage YAML files (a list, or a comma-separated string of paths)."""
    from ..train import Stage

    if isinstance(paths, str):
        paths = [p.strip() for p in paths.split(",") if p.strip()]
    return [stage_plan(Stage.from_yaml(p), latent_downsample) for p in paths]


def gpu_hours(flops: float, mfu: float, peak_flops: float = H100_BF16_PEAK_FLOPS) -> float:
    """GPU-hours to compute ``flops`` at model FLOPs utilisation ``mfu`` of ``peak_flops``."""
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu: expected a fraction in (0, 1], got {mfu!r}")
    return flops / (mfu * peak_flops) / 3600.0


def paper_implied_mfu(peak_flops: float = H100_BF16_PEAK_FLOPS) -> float:
    """The MFU at which the paper's four stages take its 499.2 H100-hours (under our FLOP count)."""
    total = sum(s.total_flops() for s in PAPER_STAGES)
    return total / (PAPER_GPU_HOURS * 3600.0 * peak_flops)


def project(stages, mfu: float | None = None, price: float = PRICE_PER_GPU_HOUR, gpus: int = 8,
            peak_flops: float = H100_BF16_PEAK_FLOPS) -> dict:
    """Cost of a list of :class:`StagePlan`: per-stage rows and a total.

    Returns ``{"rows": [...], "total": {...}, "mfu": ..., "price": ..., "gpus": ...}``; each row has
    ``flops_per_step``, ``flops``, ``gpu_hours``, ``wall_hours`` (on ``gpus`` GPUs) and ``dollars``.
    ``mfu=None`` uses :func:`paper_implied_mfu`.
    """
    mfu = paper_implied_mfu(peak_flops) if mfu is None else float(mfu)
    if price < 0 or gpus < 1:
        raise ValueError(f"price and gpus: expected price >= 0 and gpus >= 1, got {price!r} and {gpus!r}")
    rows = []
    for plan in stages:
        per_step = plan.flops_per_step()
        hours = gpu_hours(per_step * plan.steps, mfu, peak_flops)
        rows.append({**asdict(plan), "model_overrides": dict(plan.model_overrides), "flops_per_step": per_step,
                     "flops": per_step * plan.steps, "gpu_hours": hours, "wall_hours": hours / gpus,
                     "dollars": hours * price})
    total = {key: sum(r[key] for r in rows) for key in ("steps", "flops", "gpu_hours", "wall_hours", "dollars")}
    return {"rows": rows, "total": total, "mfu": mfu, "price": price, "gpus": gpus, "peak_flops": peak_flops}


def paper_cost_table(mask: bool = True) -> dict:
    """The paper's four stages projected at the paper-implied MFU (``mask=False``: the same without masking).

    With masking the total is the paper's $1,890 by construction (at its exact $1,890 / 499.2 h per
    GPU-hour); the unmasked variant shows what deferred masking saves at the same step counts.
    """
    plans = PAPER_STAGES if mask else tuple(StagePlan(s.name, s.preset, s.latent_side, 0.0, s.steps, s.global_batch,
                                                      s.model_overrides) for s in PAPER_STAGES)
    return project(plans, mfu=paper_implied_mfu(), price=PAPER_DOLLARS / PAPER_GPU_HOURS, gpus=PAPER_GPUS)


def paper_headline() -> dict:
    """The paper's reported cost figures."""
    return {"dollars": PAPER_DOLLARS, "days": PAPER_DAYS, "gpus": PAPER_GPUS, "gpu_hours": PAPER_GPU_HOURS,
            "price_per_gpu_hour": PAPER_DOLLARS / PAPER_GPU_HOURS}


def measured_throughput(plan: StagePlan, img_per_s: float) -> float:
    """Achieved training FLOP/s of a run that processed ``img_per_s`` images per second."""
    return plan.flops_per_step() * img_per_s / plan.global_batch
