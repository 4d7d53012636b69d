"""Side by side with the paper's official code: the train step, sampling and dispatched ops, same weights.

The official implementation (SonyResearch/micro_diffusion, Apache-2.0) is not part of this package. Point the
benchmark at a checkout of it, importable with its own requirements (timm, einops, easydict, open_clip_torch,
mosaicml composer, diffusers, transformers)::

    workbench bench peer --official ~/src/micro_diffusion --json docs/bench/peer.json [--batch 8] [--repeats 5]

Both sides get the official ``DiT``'s weights (converted as ``workbench convert-official`` does) and the
same inputs, and run interleaved in one process (``bench.interleaved_timings``), so the ratios are not hit
by machine drift:

- the train step at each mask ratio: EDM loss (official: ``LatentDiffusion.edm_loss``; ours: ``EDMLoss``),
  backward, gradient clipping to norm 0.25 and AdamW with the official config's settings, each side with the
  implementation its own training uses (see ``_train_step``);
- sampling: 30 Heun steps with CFG (official: ``edm_sampler_loop``; ours: ``diffusion.sample``);
- top-level dispatched aten ops per train step (what makes a GPU step host-bound).

``speedup`` is the official time over ours: above 1 we are faster. The default model is the issue's
comparison point: width 256, depth 4, a 2 × 256 patch-mixer, 8 experts, 4 × 32 × 32 latents, 77 × 1024 captions.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import torch

from ..config import MicroDiTConfig
from ..errors import InputError

PEER_MODEL = dict(width=256, depth=4, mixer_depth=2, mixer_width=256, num_experts=8)   # xl_2 otherwise
SIGMA_DATA = 0.9               # the official LatentDiffusion's σ_data (SDXL latents)
OFFICIAL_REQUIREMENTS = "timm einops easydict open_clip_torch mosaicml diffusers transformers"


def official_kwargs(cfg: MicroDiTConfig) -> dict:
    """The official ``DiT(...)`` arguments of the model that ``cfg`` describes (layer-wise ratios spelt out)."""
    def ramp(lo_hi: tuple[float, float]) -> list[float]:
        lo, hi = lo_hi
        return [lo + (hi - lo) * i / (cfg.depth - 1) for i in range(cfg.depth)] if cfg.depth > 1 else [hi]

    return {"input_size": cfg.sample_size, "patch_size": cfg.patch_size, "in_channels": cfg.in_channels,
            "dim": cfg.width, "depth": cfg.depth, "head_dim": cfg.head_dim, "multiple_of": cfg.ffn_multiple_of,
            "caption_channels": cfg.caption_dim, "pos_interp_scale": cfg.pos_interp_scale, "norm_eps": cfg.norm_eps,
            "depth_init": True, "qkv_multipliers": ramp(cfg.qkv_ratio), "ffn_multipliers": ramp(cfg.mlp_ratio),
            "use_patch_mixer": cfg.mixer_depth > 0, "patch_mixer_depth": cfg.mixer_depth,
            "patch_mixer_dim": cfg.mixer_width, "patch_mixer_qkv_ratio": 1.0,
            "patch_mixer_mlp_ratio": cfg.mixer_mlp_ratio, "use_bias": False, "num_experts": cfg.num_experts,
            "expert_capacity": int(cfg.expert_capacity), "experts_every_n": cfg.moe_every}


def import_official(checkout: str | Path):
    """``(dit_module, model_module)`` of the official code in ``checkout`` (the folder holding ``micro_diffusion``)."""
    root = Path(checkout).expanduser().resolve()
    if not (root / "micro_diffusion" / "models" / "dit.py").is_file():
        raise InputError(f"--official {checkout}: no micro_diffusion/models/dit.py there; give the root of a "
                         f"SonyResearch/micro_diffusion checkout")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        return (importlib.import_module("micro_diffusion.models.dit"),
                importlib.import_module("micro_diffusion.models.model"))
    except ImportError as err:
        raise InputError(f"the official code in {root} does not import ({err}); install its requirements "
                         f"(pip install {OFFICIAL_REQUIREMENTS}) in this environment") from err


def official_pair(checkout: str | Path, cfg: MicroDiTConfig, seed: int = 0):
    """``(official LatentDiffusion, our MicroDiT)`` with the same weights: the official DiT's, converted."""
    from types import SimpleNamespace

    from ..config import to_dict
    from ..interop.official import convert_state_dict
    from ..model import MicroDiT

    dit_module, model_module = import_official(checkout)
    torch.manual_seed(seed)
    dit = dit_module.DiT(**official_kwargs(cfg))
    with torch.no_grad():                 # non-zero everywhere (the official init zeroes adaLN and the final layer)
        for name, p in dit.named_parameters():
            if p.ndim > 1:
                p.copy_(torch.randn_like(p) / p[0].numel() ** 0.5)
            else:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
    vae = torch.nn.Identity()                                 # latents are precomputed, as in the paper's training
    vae.config = SimpleNamespace(scaling_factor=0.13025)
    official = model_module.LatentDiffusion(dit, vae, torch.nn.Identity(), None, dtype="float32")
    state, converted = convert_state_dict(dit.state_dict(), cfg)
    ours = MicroDiT(**{**to_dict(converted), "caption_mask_compat": True})
    ours.load_state_dict(state)
    return official, ours


ADAMW = dict(lr=2.4e-4, weight_decay=0.1, eps=1e-8, betas=(0.9, 0.999))   # the official res_256_pretrain.yaml
CLIP_NORM = 0.25                                                           # its gradient_clipping algorithm


def _train_step(loss_fn, model: torch.nn.Module, official: bool):
    """Loss, backward, clip to norm 0.25, AdamW step, as each side's training does it: the official config's
    ``torch.optim.AdamW`` (torch's default implementation) and ``clip_grad_norm_``; ours the Trainer's fused
    kernel (``train.optim.adamw_kernel``) and three-op clipping (``train.optim.clip_grad_norm``)."""
    from ..train.optim import clip_grad_norm

    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, **ADAMW, **({} if official else {"fused": True}))
    clip = torch.nn.utils.clip_grad_norm_ if official else clip_grad_norm

    def step():
        loss_fn().backward()
        clip(params, CLIP_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def _ratios(seconds: dict, ops: dict | None = None) -> dict:
    """Official over each of our sides: ``speedup`` (time) and ``ops_ratio`` (dispatched ops); > 1 favours ours."""
    ours = [name for name in seconds if name != "official"]
    out = {"speedup": {name: seconds["official"] / seconds[name] for name in ours}}
    if ops:
        out["ops_ratio"] = {name: ops["official"] / ops[name] for name in ours}
    return out


def count_ops(fn, calls: int = 2) -> float:
    """Top-level dispatched aten ops per call of ``fn`` (ops inside other aten ops are not counted)."""
    from torch.profiler import ProfilerActivity, profile

    from .step import top_level_aten_events

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
    return len(top_level_aten_events(prof)) / calls


def bench_peer(official_checkout: str | Path, batch: int = 8, masks=(0.0, 0.75), caption_len: int = 77,
               sample_steps: int = 30, cfg_scale: float = 5.0, repeats: int = 5, seed: int = 0,
               model: dict | None = None, compile: bool = False) -> dict:
    """The peer report (see the module docstring): per mask ratio, seconds per train step of each side and the
    speed-up, top-level aten ops per step of each side and their ratio; the same for sampling.

    ``compile`` adds a third side, ``ours_compiled``: our model with ``MicroDiT.compile_blocks()`` (the Stage's
    ``compile`` option; the official code has none), with its speed-up and op ratio against the official."""
    from . import environment, interleaved_timings
    from ..diffusion import EDMConfig, EDMLoss, sample
    from ..model.microdit import preset_config

    cfg = preset_config("xl_2", **{**PEER_MODEL, **(model or {})})
    official, ours = official_pair(official_checkout, cfg, seed)
    sides = {"ours": ours}
    if compile:
        import copy

        sides["ours_compiled"] = copy.deepcopy(ours).compile_blocks()
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=gen)   # (B, C, H, W)
    caption = torch.randn(batch, caption_len, cfg.caption_dim, generator=gen)                    # (B, L, D)
    ours_loss, report = EDMLoss(EDMConfig(sigma_data=SIGMA_DATA)), {"train": {}, "sampling": {}}
    for net in (official, *sides.values()):
        net.train()
    for mask in masks:
        steps = {"official": _train_step(lambda m=mask: official.edm_loss(x0, caption[:, None], mask_ratio=m),
                                         official.dit, official=True)}
        for name, net in sides.items():
            steps[name] = _train_step(lambda m=mask, net=net: ours_loss(net, x0, caption, None, mask_ratio=m).loss,
                                      net, official=False)
        seconds = interleaved_timings(steps, repeats)
        ops = {name: count_ops(fn) for name, fn in steps.items()}
        report["train"][f"mask_{mask:g}"] = {"seconds": seconds, "aten_ops_per_step": ops, **_ratios(seconds, ops)}
    for net in (official, *sides.values()):
        net.eval()
    noise = torch.randn(batch, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=gen)
    with torch.no_grad():
        draws = {"official": lambda: official.edm_sampler_loop(noise, caption[:, None], steps=sample_steps,
                                                               cfg=cfg_scale)}
        for name, net in sides.items():
            draws[name] = lambda net=net: sample(net, caption, None, steps=sample_steps, cfg_scale=cfg_scale,
                                                 noise=noise, edm=EDMConfig(sigma_data=SIGMA_DATA))
        seconds = interleaved_timings(draws, max(1, repeats // 2), warmup=1)
        report["sampling"] = {"seconds": seconds, **_ratios(seconds), "steps": sample_steps, "cfg_scale": cfg_scale,
                              "sampler": "heun"}
    report["model"] = {"official_kwargs": official_kwargs(cfg), "parameters": sum(p.numel() for p in ours.parameters()),
                       "batch": batch, "caption_len": caption_len}
    report["environment"] = environment()
    return report
