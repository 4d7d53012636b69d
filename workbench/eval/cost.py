"""The cost model: training FLOPs from ``MicroDiT.flops``, GPU-hours at an assumed MFU, dollars.

The paper's headline (Sehwag et al., "Stretching Each Dollar", CVPR 2025, arXiv:2407.15811):
**$1,890** = 2.6 days x 24 h x 8 H100 = 499.2 GPU-hours at about $3.79 per GPU-hour, for
250K + 30K + 50K + 5K steps at batch 2048; 118x cheaper than Stable Diffusion and 14x cheaper than
the previous low-cost state of the art ($28,400). ``paper_comparison()`` carries those figures.

Assumptions, stated once:

- a training step costs 3x the forward FLOPs (forward + backward with two matmuls per forward
  one); the optimiser, EMA and data loading are not counted;
- ``MicroDiT.flops`` counts 2 FLOPs per multiply-add of every matmul / conv / attention product
  (within 2 % of ``torch.utils.flop_counter``);
- the GPUs (``GPUS``) peak at their vendor datasheets' dense bf16 tensor-core FLOP/s (an H100 SXM:
  989.4 TFLOP/s); their prices per GPU-hour are **assumptions** (override them with ``price=``);
- one MFU (model FLOPs utilisation) for every stage and every GPU kind. It defaults to the one the
  paper's own cost implies on H100s under this FLOP count (``paper_implied_mfu()``, about 18 %), so
  projecting the paper's stages gives back its $1,890.

Example::

    from workbench.eval.cost import paper_cost_table, project
    from workbench.cost_report import recipe_plans
    rows, total = paper_cost_table()["rows"], paper_cost_table()["total"]   # per stage; total ~ $1,890
    plans = recipe_plans("configs/paper")          # or a pipeline YAML, stage YAMLs, or "paper"
    project(plans, gpu="h200", mfu=0.45, gpus=8)["total"]["dollars"]

or from the shell: ``workbench cost --config configs/paper --gpu h100 --mfu 0.45 [--gpus 8] [--price 3.79]``.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from ..errors import InputError

H100_BF16_PEAK_FLOPS = 989.4e12        # dense bf16 FLOP/s of one H100 SXM
PRICE_PER_GPU_HOUR = 3.79              # the paper's implied H100 price, $ per GPU-hour
PAPER_DOLLARS = 1890.0                 # the paper's training cost
PAPER_DAYS, PAPER_GPUS = 2.6, 8        # 2.6 days on one 8xH100 node
PAPER_GPU_HOURS = PAPER_DAYS * 24 * PAPER_GPUS   # 499.2
PAPER_CITATION = "Sehwag et al., Stretching Each Dollar, CVPR 2025 (arXiv:2407.15811)"


# ---------------------------------------------------------------------------------------------
#  GPUs: dense bf16 peaks (vendor datasheets) and assumed prices
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GPU:
    """One GPU kind: its dense bf16 tensor-core peak (datasheet) and an assumed price per GPU-hour.

    The price is an assumption, not a quote: cloud rates differ by 2x or more between providers and
    with commitments. Pass your own (``project(..., price=2.5)``, ``workbench cost --price 2.5``).

    Example::

        GPUS["h100"].bf16_flops      # 989.4e12
        get_gpu("H200").label        # 'NVIDIA H200 SXM 141GB'
    """

    name: str
    label: str
    bf16_flops: float                  # dense (no sparsity) bf16 FLOP/s
    price: float                       # assumed $ per GPU-hour
    memory_gb: int
    peak_source: str
    price_note: str


GPUS: dict[str, GPU] = {g.name: g for g in (
    GPU("a100", "NVIDIA A100 SXM 80GB", 312e12, 1.79, 80,
        "NVIDIA A100 datasheet: BF16 tensor core 312 TFLOPS (624 with sparsity)",
        "assumed: a typical 2025 on-demand rate for an A100 80GB SXM"),
    GPU("h100", "NVIDIA H100 SXM 80GB", H100_BF16_PEAK_FLOPS, PRICE_PER_GPU_HOUR, 80,
        "NVIDIA H100 datasheet: BF16 tensor core 1,979 TFLOPS with sparsity (Hopper whitepaper: 989.4 dense)",
        "the paper's own implied rate: $1,890 / 499.2 H100-hours"),
    GPU("h200", "NVIDIA H200 SXM 141GB", H100_BF16_PEAK_FLOPS, 4.50, 141,
        "NVIDIA H200 datasheet: BF16 tensor core 1,979 TFLOPS with sparsity (the H100's GH100 compute, more memory)",
        "assumed: a typical 2025 on-demand rate for an H200 SXM"),
    GPU("l40s", "NVIDIA L40S 48GB", 362.05e12, 1.50, 48,
        "NVIDIA L40S datasheet: BF16 tensor core 362.05 TFLOPS (733 with sparsity)",
        "assumed: a typical 2025 on-demand rate for an L40S"),
)}


def get_gpu(gpu: str | GPU) -> GPU:
    """A :class:`GPU` by name (case-insensitive: ``a100``, ``h100``, ``h200``, ``l40s``), or the GPU itself."""
    if isinstance(gpu, GPU):
        return gpu
    key = str(gpu).strip().lower()
    if key not in GPUS:
        raise InputError(f"gpu: unknown GPU kind {gpu!r}; known: {', '.join(GPUS)}")
    return GPUS[key]


def check_mfu(mfu: float) -> float:
    """``mfu`` as a float, or a ValueError when it is not a fraction in (0, 1]."""
    if isinstance(mfu, bool) or not isinstance(mfu, (int, float)) or not 0 < mfu <= 1:
        hint = f" ({mfu:g} % is {mfu / 100:g})" if isinstance(mfu, (int, float)) and 1 < mfu <= 100 else ""
        raise InputError(f"mfu: expected a fraction in (0, 1], got {mfu!r}{hint}")
    return float(mfu)


# ---------------------------------------------------------------------------------------------
#  Stages
# ---------------------------------------------------------------------------------------------

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
        key = (self.preset, self.latent_side, self.mask_ratio, self.global_batch, self.model_overrides)
        try:
            return 3.0 * _cached_forward_flops(*key)
        except TypeError:                  # an unhashable override value (a YAML list): count it afresh
            return 3.0 * forward_flops(*key[:4], dict(self.model_overrides))

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


@functools.lru_cache(maxsize=256)
def _cached_forward_flops(preset: str, latent_side: int, mask_ratio: float, batch: int, overrides: tuple) -> float:
    """:func:`forward_flops` remembered per plan (a figure projects the same stages many times)."""
    return forward_flops(preset, latent_side, mask_ratio, batch, dict(overrides))


def stage_plan(stage, latent_downsample: int | None = 1) -> StagePlan:
    """The :class:`StagePlan` of a ``workbench.train.Stage`` (pixel codec: ``latent_downsample=1``; SDXL VAE: 8).

    ``latent_downsample=None`` infers it as the stage's resolution over the model's ``sample_size``
    (the latent side the model is built for: 256 px / 32 = 8 for the paper's stage 1).
    """
    down = latent_downsample or inferred_downsample(stage)
    return StagePlan(stage.name, stage.model, stage.resolution // down, stage.mask_ratio, stage.steps,
                     stage.global_batch, tuple(sorted(stage.model_overrides.items())))


def inferred_downsample(stage) -> int:
    """The codec downsample a stage implies: its resolution / its model's ``sample_size`` (a whole number)."""
    from ..model.microdit import preset_config

    side = preset_config(stage.model, **stage.model_overrides).sample_size
    if stage.resolution % side:
        raise InputError(f"stage {stage.name}: resolution {stage.resolution} is not a multiple of the model's "
                         f"sample_size {side}; give the codec's downsample (latent_downsample / --latent-downsample)")
    return stage.resolution // side


def stage_plans(paths, latent_downsample: int | None = 1) -> list[StagePlan]:
    """:class:`StagePlan` of stage YAML files (a list, or a comma-separated string of paths)."""
    from ..train import Stage

    if isinstance(paths, str):
        paths = [p.strip() for p in paths.split(",") if p.strip()]
    return [stage_plan(Stage.from_yaml(p), latent_downsample) for p in paths]


def gpu_hours(flops: float, mfu: float, peak_flops: float = H100_BF16_PEAK_FLOPS) -> float:
    """GPU-hours to compute ``flops`` at model FLOPs utilisation ``mfu`` of ``peak_flops``."""
    return flops / (check_mfu(mfu) * peak_flops) / 3600.0


def paper_implied_mfu(peak_flops: float = H100_BF16_PEAK_FLOPS) -> float:
    """The MFU at which the paper's four stages take its 499.2 H100-hours (under our FLOP count)."""
    total = sum(s.total_flops() for s in PAPER_STAGES)
    return total / (PAPER_GPU_HOURS * 3600.0 * peak_flops)


def project(stages, mfu: float | None = None, price: float | None = None, gpus: int = 8,
            peak_flops: float | None = None, gpu: str | GPU = "h100") -> dict:
    """Cost of a list of :class:`StagePlan` on ``gpus`` GPUs of kind ``gpu``: per-stage rows and a total.

    Returns ``{"rows": [...], "total": {...}, "mfu", "price", "gpus", "gpu", "gpu_label", "peak_flops"}``;
    each row has ``flops_per_step``, ``flops``, ``gpu_hours``, ``wall_hours`` and ``wall_days`` (on
    ``gpus`` GPUs) and ``dollars``. ``mfu=None`` uses :func:`paper_implied_mfu` (the paper's H100
    efficiency, applied to any GPU kind); ``price=None`` the GPU's assumed price; ``peak_flops=None``
    its datasheet peak.

    Example::

        project(PAPER_STAGES, gpu="a100", mfu=0.45, gpus=64)["total"]["wall_days"]
    """
    spec = get_gpu(gpu)
    mfu = paper_implied_mfu() if mfu is None else check_mfu(mfu)
    price = spec.price if price is None else float(price)
    peak = spec.bf16_flops if peak_flops is None else float(peak_flops)
    if not price >= 0:
        raise InputError(f"price: expected dollars per GPU-hour >= 0, got {price!r}")
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise InputError(f"gpus: expected a whole number of GPUs >= 1, got {gpus!r}")
    rows = []
    for plan in stages:
        per_step = plan.flops_per_step()
        hours = gpu_hours(per_step * plan.steps, mfu, peak)
        rows.append({**asdict(plan), "model_overrides": dict(plan.model_overrides), "flops_per_step": per_step,
                     "flops": per_step * plan.steps, "gpu_hours": hours, "wall_hours": hours / gpus,
                     "wall_days": hours / gpus / 24, "dollars": hours * price})
    total = {key: sum(r[key] for r in rows)
             for key in ("steps", "flops", "gpu_hours", "wall_hours", "wall_days", "dollars")}
    return {"rows": rows, "total": total, "mfu": mfu, "price": price, "gpus": gpus, "gpu": spec.name,
            "gpu_label": spec.label, "peak_flops": peak}


def project_all_gpus(stages, mfu: float | None = None, gpus: int = 8) -> dict[str, dict]:
    """:func:`project` on every kind in ``GPUS`` at its assumed price: ``{name: projection}``."""
    stages = list(stages)
    return {name: project(stages, mfu=mfu, gpus=gpus, gpu=name) for name in GPUS}


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


# ---------------------------------------------------------------------------------------------
#  The paper's side-by-side comparison
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PaperCostRow:
    """One model of the paper's cost comparison, with the figures as the paper states them (None: not stated).

    ``cheaper_by`` is the paper's claimed ratio of this model's cost to MicroDiT's (118 for Stable
    Diffusion). ``gpu_hours`` are in ``gpu`` hours (H100 for MicroDiT).
    """

    model: str
    params: int | None                 # parameters
    train_images: int | None           # training images
    gpu_hours: float | None
    gpu: str | None
    dollars: float | None              # training cost, USD, as stated
    fid: float | None                  # COCO zero-shot FID-30K
    cheaper_by: float | None           # the paper's "N x lower cost" claim against this model
    source: str

    def dollars_estimate(self) -> float | None:
        """The stated cost, else the one the paper's ratio implies (``cheaper_by`` x $1,890)."""
        if self.dollars is not None:
            return self.dollars
        return None if self.cheaper_by is None else self.cheaper_by * PAPER_DOLLARS

    def ratio_from_dollars(self) -> float | None:
        """This model's stated cost over MicroDiT's $1,890 (None when the paper states no cost)."""
        return None if self.dollars is None else self.dollars / PAPER_DOLLARS


def paper_comparison() -> list[PaperCostRow]:
    """The paper's cost comparison: MicroDiT against Stable Diffusion and PixArt-alpha, as the paper states it.

    Only figures the paper states are filled in; Stable Diffusion's cost is stated only as a ratio
    (``dollars_estimate()`` turns it into dollars). Note the paper's 14x against PixArt-alpha is not
    the ratio of its two dollar figures ($28,400 / $1,890 = 15.0x); both are kept as stated.

    Example::

        [(r.model, r.dollars_estimate()) for r in paper_comparison()]
        # [('MicroDiT_XL_2', 1890.0), ('Stable Diffusion', 223020.0), ('PixArt-alpha', 28400.0)]
    """
    return [
        PaperCostRow("MicroDiT_XL_2", 1_165_442_320, 37_000_000, PAPER_GPU_HOURS, "H100", PAPER_DOLLARS, 12.66, None,
                     f"{PAPER_CITATION}, abstract: 1.16B parameters, 37M images (22M real + 15M synthetic), "
                     "$1,890, 2.6 days on one 8xH100 node, FID 12.7 (12.66 real + synthetic, 12.72 real only)"),
        PaperCostRow("Stable Diffusion", None, None, None, None, None, None, 118.0,
                     f"{PAPER_CITATION}, abstract: 118x lower cost than Stable Diffusion models"),
        PaperCostRow("PixArt-alpha", None, None, None, None, 28_400.0, None, 14.0,
                     f"{PAPER_CITATION}, abstract: 14x lower cost than the previous low-cost state of the "
                     "art, which costs $28,400 (PixArt-alpha, Chen et al. 2023)"),
    ]


# ---------------------------------------------------------------------------------------------
#  Display: dollars that stay dollars (no TeX), text and HTML tables, plotly figures
# ---------------------------------------------------------------------------------------------
