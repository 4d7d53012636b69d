"""MicroDiT: a sparse diffusion transformer with deferred patch masking (Sehwag et al. 2025).

Data flow::

    patches + sin-cos positions -> patch-mixer on ALL tokens -> random mask (keep int(T(1-r)))
      -> backbone on the KEPT tokens only -> final layer -> zero mask token at dropped positions
      -> unshuffle -> unpatchify

    (with rope=True, 2-D rotary positions rotate q and k in every self-attention as well)

Usage::

    from workbench import MicroDiT
    model = MicroDiT.from_preset("nano")
    model.summary()                                   # parameters by part
    out = model(x, c_noise, caption, caption_mask, mask_ratio=0.75)
    out.sample                                        # (B, C, H, W) raw network output F
    out.keep                                          # (B, T) bool, True = patch kept
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.modeling_utils import ModelMixin

from ..config import MicroDiTConfig, check_known_keys, config_diff, format_diff, from_dict, to_dict
from .blocks import DiTBlock, FinalLayer, SwiGLU, attention_inner_dim, expert_hidden, layer_norm, swiglu_hidden
from .embeddings import CaptionEmbed, PatchEmbed, TimestepEmbed, sincos_2d_positions
from .locality import ConvStem, LongSkips, OutputConv
from .masking import gather_tokens, random_keep, restore_tokens
from .moe import ExpertChoiceMoE, tokens_per_expert
from .rope import rope_2d_tables
from ..errors import InputError, MissingFileError

# --------------------------------------------------------------------------------------------
#  Size presets
# --------------------------------------------------------------------------------------------

PRESETS: dict[str, dict] = {
    # the paper's models, on 4-channel SDXL latents and 1024-d DFN5B CLIP caption tokens
    "xl_2": dict(width=1024, depth=28, head_dim=64, mixer_depth=6, mixer_width=768),
    "tiny_2": dict(width=512, depth=16, head_dim=32, mixer_depth=4, mixer_width=512),
    # CPU-sized, same architecture: pixel codec (3 channels) and MiniLM captions (384-d)
    "nano": dict(in_channels=3, caption_dim=384, width=128, depth=6, head_dim=32, mixer_depth=1, mixer_width=128,
                 num_experts=4, ffn_multiple_of=64),
    "micro": dict(in_channels=3, caption_dim=384, width=256, depth=12, head_dim=32, mixer_depth=2, mixer_width=256,
                  num_experts=8, ffn_multiple_of=128),
}


def preset_config(name: str, **overrides) -> MicroDiTConfig:
    """The ``MicroDiTConfig`` of a named preset with field overrides."""
    if name not in PRESETS:
        raise InputError(f"unknown MicroDiT preset {name!r}: expected one of {', '.join(sorted(PRESETS))}")
    check_known_keys(MicroDiTConfig, overrides)
    return from_dict(MicroDiTConfig, {**PRESETS[name], **overrides})


class MicroDiTOutput(NamedTuple):
    """Model output: ``sample`` (B, C, H, W) raw network output; ``keep`` (B, T) bool or None."""

    sample: torch.Tensor
    keep: torch.Tensor | None


@dataclass
class BlockPlan:
    """Shape of one transformer block after layer-wise scaling."""

    attn_dim: int        # self-attention inner dim (heads = attn_dim / head_dim)
    ffn_hidden: int      # SwiGLU hidden, or per-expert hidden for MoE
    moe: bool


def block_plans(cfg: MicroDiTConfig) -> tuple[list[BlockPlan], list[BlockPlan]]:
    """Per-block widths of the patch-mixer and the backbone (layer-wise scaling, MoE placement)."""
    def ffn_hidden(width, ratio, moe):
        hidden = expert_hidden if moe else swiglu_hidden
        return hidden(width, ratio, cfg.ffn_multiple_of)

    every = cfg.moe_every
    mixer = []
    for i in range(cfg.mixer_depth):
        moe = bool(every) and i >= 1 and (i + 1) % every == 0
        mixer.append(BlockPlan(cfg.mixer_width, ffn_hidden(cfg.mixer_width, cfg.mixer_mlp_ratio, moe), moe))
    qkv = np.linspace(*cfg.qkv_ratio, num=cfg.depth)
    mlp = np.linspace(*cfg.mlp_ratio, num=cfg.depth)
    backbone = []
    for i in range(cfg.depth):
        moe = bool(every) and i < cfg.depth - 1 and (i + 1) % every == 0  # the last block is always dense
        backbone.append(BlockPlan(attention_inner_dim(cfg.width, float(qkv[i]), cfg.head_dim),
                                  ffn_hidden(cfg.width, float(mlp[i]), moe), moe))
    return mixer, backbone


# --------------------------------------------------------------------------------------------
#  The model
# --------------------------------------------------------------------------------------------

class MicroDiT(ModelMixin, ConfigMixin):
    """Text-conditioned diffusion transformer with a patch-mixer, deferred masking and MoE FFNs.

    Keyword arguments are the fields of :class:`workbench.config.MicroDiTConfig` (validated there).
    ``save_pretrained`` / ``from_pretrained`` write and read safetensors + config.json.

    Example::

        model = MicroDiT.from_preset("nano", depth=4)
        x = torch.randn(2, 3, 32, 32); c_noise = torch.zeros(2)
        caption = torch.randn(2, 77, 384)
        model(x, c_noise, caption, mask_ratio=0.75).sample.shape   # (2, 3, 32, 32)
    """

    config_name = "config.json"
    _supports_gradient_checkpointing = True          # model.enable_gradient_checkpointing(): per block, recomputed

    def __init__(self, **config):
        super().__init__()
        cfg = from_dict(MicroDiTConfig, config)
        self.register_to_config(**to_dict(cfg))
        self.arch = cfg
        mixer_plans, backbone_plans = block_plans(cfg)
        width, eps = cfg.width, cfg.norm_eps

        self.stem = ConvStem(cfg.in_channels, cfg.conv_stem) if cfg.conv_stem else None
        self.patch_embed = PatchEmbed(cfg.conv_stem or cfg.in_channels, width, cfg.patch_size)
        self.t_embed = TimestepEmbed(width, cfg.timestep_freqs)
        self.caption_embed = CaptionEmbed(cfg.caption_dim, width, cfg.head_dim, cfg.caption_mlp_ratio,
                                          cfg.ffn_multiple_of, eps)

        has_mixer, project = cfg.mixer_depth > 0, cfg.mixer_depth > 0 and cfg.mixer_width != width
        mw = cfg.mixer_width if has_mixer else width
        def projection(a: int, b: int) -> nn.Module:
            return nn.Sequential(layer_norm(a, eps), nn.Linear(a, b, bias=False))

        self.mixer_in = projection(width, mw) if project else nn.Identity()
        self.mixer_caption = projection(width, mw) if project else nn.Identity()
        self.mixer = nn.ModuleList(self._block(mw, plan, eps) for plan in mixer_plans)
        self.mixer_out = projection(mw, width) if project else nn.Identity()

        self.blocks = nn.ModuleList(self._block(width, plan, eps) for plan in backbone_plans)
        self.skip_joins = LongSkips(cfg.depth, width) if cfg.long_skips else None
        self.final_layer = FinalLayer(width, cfg.patch_size ** 2 * cfg.in_channels, eps)
        self.out_conv = OutputConv(cfg.in_channels) if cfg.output_conv else None
        self.register_buffer("mask_token", torch.zeros(1, 1, cfg.patch_size ** 2 * cfg.in_channels), persistent=False)
        self.gradient_checkpointing = False         # diffusers' switch, set by enable_gradient_checkpointing()
        self.initialize_weights()

    def _block(self, width: int, plan: BlockPlan, eps: float) -> DiTBlock:
        cfg = self.arch
        ffn = (ExpertChoiceMoE(width, plan.ffn_hidden, cfg.num_experts, cfg.expert_capacity) if plan.moe
               else SwiGLU(width, plan.ffn_hidden))
        return DiTBlock(width, cfg.width, plan.attn_dim, cfg.head_dim, ffn, eps, cosine_attention=cfg.cosine_attention)

    # ---------------------------------------------------------------- init (the paper's scheme)
    def initialize_weights(self) -> None:
        """xavier_uniform Linears; trunc_normal(0.02) q/kv/w1/gate; depth-scaled out-projections; zeroed
        adaLN/output."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        conv = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(conv.view(conv.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        for mlp in (self.t_embed, self.caption_embed.proj, self.caption_embed.pool_mlp):
            nn.init.normal_(mlp.fc1.weight, std=0.02)
            nn.init.normal_(mlp.fc2.weight, std=0.02)

        depth = self.arch.depth
        for i, block in enumerate(self.blocks):
            self._init_block(block, out_std=0.02 / (2 * (i + 1)) ** 0.5)
        for block in self.mixer:
            self._init_block(block, out_std=0.02 / (2 * depth) ** 0.5)

        caption_block = self.caption_embed.block
        nn.init.trunc_normal_(caption_block.attn.qkv.weight, std=0.02)
        nn.init.zeros_(caption_block.attn.proj.weight)
        nn.init.trunc_normal_(caption_block.ffn.w1.weight, std=0.02)
        nn.init.trunc_normal_(caption_block.ffn.w2.weight, std=0.02)
        nn.init.zeros_(caption_block.ffn.w3.weight)

        nn.init.zeros_(self.final_layer.adaln.weight)
        nn.init.zeros_(self.final_layer.linear.weight)
        for lever in (self.skip_joins, self.out_conv):     # locality levers start as the identity
            if lever is not None:
                lever.reset_parameters()

    @staticmethod
    def _init_block(block: DiTBlock, out_std: float) -> None:
        def trunc(weight: torch.Tensor, std: float) -> None:
            nn.init.trunc_normal_(weight, std=std)

        trunc(block.attn.qkv.weight, 0.02)
        trunc(block.attn.proj.weight, out_std)
        trunc(block.cross_attn.q.weight, 0.02)
        trunc(block.cross_attn.kv.weight, 0.02)
        trunc(block.cross_attn.proj.weight, out_std)
        ffn = block.ffn
        if isinstance(ffn, ExpertChoiceMoE):
            trunc(ffn.gate.weight, 0.02)
            trunc(ffn.w1, 0.02)
            trunc(ffn.w2, out_std)
        else:
            trunc(ffn.w1.weight, 0.02)
            trunc(ffn.w2.weight, out_std)
            trunc(ffn.w3.weight, out_std)
        nn.init.zeros_(block.adaln.weight)
        nn.init.zeros_(block.adaln.bias)

    # ---------------------------------------------------------------- forward
    def check_inputs(self, x: torch.Tensor, caption: torch.Tensor, caption_mask: torch.Tensor | None,
                     mask_ratio: float) -> None:
        """Raise ``ValueError`` naming expected and received values for malformed inputs."""
        cfg = self.arch
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise InputError(f"MicroDiT expected latents of shape (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}; "
                             f"the codec's channels must equal model.config.in_channels={cfg.in_channels}")
        h, w = x.shape[-2:]
        if h % cfg.patch_size or w % cfg.patch_size:
            raise InputError(f"MicroDiT expected a latent side divisible by patch_size={cfg.patch_size}, "
                             f"got {h}x{w}")
        if not 0.0 <= mask_ratio < 1.0:
            raise InputError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        if caption.ndim != 3 or caption.shape[-1] != cfg.caption_dim or caption.shape[0] != x.shape[0]:
            raise InputError(f"MicroDiT expected caption embeddings of shape ({x.shape[0]}, L, {cfg.caption_dim}), "
                             f"got {tuple(caption.shape)}; the text encoder's width must equal "
                             f"model.config.caption_dim={cfg.caption_dim}")
        if caption_mask is not None and caption_mask.shape != caption.shape[:2]:
            raise InputError(f"caption_mask must have shape {tuple(caption.shape[:2])}, "
                             f"got {tuple(caption_mask.shape)}")

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, caption: torch.Tensor,
                caption_mask: torch.Tensor | None = None, mask_ratio: float = 0.0,
                generator: torch.Generator | None = None, mask_noise: torch.Tensor | None = None) -> MicroDiTOutput:
        """Network F of EDM: ``x`` (B, C, H, W) scaled input, ``c_noise`` (B,) = ln(sigma)/4.

        ``caption`` (B, L, caption_dim) token states; ``caption_mask`` (B, L), 1 for real tokens
        (ignored when ``caption_mask_compat``). With ``mask_ratio > 0`` only ``int(T(1-r))``
        random tokens per sample pass the backbone; ``keep`` says which. The mask is drawn from
        ``generator``, or is the argsort of given ``mask_noise`` (B, T).
        """
        self.check_inputs(x, caption, caption_mask, mask_ratio)
        cfg = self.arch
        b, _, h, w = x.shape
        p = cfg.patch_size
        if cfg.caption_mask_compat or caption_mask is None:
            caption_mask = None
        else:  # a caption with no real token attends to all of its (zero) tokens rather than to nothing
            caption_mask = caption_mask.bool() | ~caption_mask.bool().any(dim=1, keepdim=True)  # (B, L)

        pos = sincos_2d_positions(cfg.width, h // p, w // p, cfg.pos_interp_scale, x.device).to(x.dtype)  # (T, D)
        stem = self.stem(x) if self.stem is not None else x                        # (B, C or C_stem, H, W)
        tokens = self.patch_embed(stem) + pos                                      # (B, T, D)
        y, pooled = self.caption_embed(caption, caption_mask)                      # (B, L, D), (B, D)
        c = self.t_embed(c_noise.reshape(-1).expand(b)) + pooled                   # (B, D)

        rope = None
        if cfg.rope:
            cos, sin = rope_2d_tables(cfg.head_dim, h // p, w // p, cfg.pos_interp_scale, x.device)  # (T, hd)
            rope = (cos[None, None], sin[None, None])                              # (1, 1, T, hd) each

        tokens = self.mixer_in(tokens)                                             # (B, T, Dm)
        y_mixer = self.mixer_caption(y) if len(self.mixer) else y                  # (B, L, Dm)
        for block in self.mixer:
            tokens = self._run_block(block, tokens, c, y_mixer, caption_mask, rope)  # (B, T, Dm)

        keep = None
        if mask_ratio > 0:
            ids_keep, ids_restore, keep = random_keep(b, tokens.shape[1], mask_ratio, generator, x.device, mask_noise)
            tokens = gather_tokens(tokens, ids_keep)                               # (B, K, Dm)
            if rope is not None:                                                   # the kept tokens' positions
                rope = tuple(table[0, 0][ids_keep][:, None] for table in rope)     # (B, 1, K, hd) each
        tokens = self.mixer_out(tokens)                                            # (B, K, D)
        skips: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            if self.skip_joins is not None:
                tokens = self.skip_joins.join(i, tokens, skips)                    # (B, K, D)
            tokens = self._run_block(block, tokens, c, y, caption_mask, rope)      # (B, K, D)
            if self.skip_joins is not None:
                self.skip_joins.push(i, tokens, skips)
        out = self.final_layer(tokens, c)                                          # (B, K, p*p*C)
        if mask_ratio > 0:
            out = restore_tokens(out, ids_restore, self.mask_token)                # (B, T, p*p*C)
        image = self.unpatchify(out, h, w)                                         # (B, C, H, W)
        if self.out_conv is not None:
            image = self.out_conv(image)                                        # (B, C, H, W)
        return MicroDiTOutput(image, keep)

    def _run_block(self, block: DiTBlock, *inputs) -> torch.Tensor:
        """``block(*inputs)``, or with its activations recomputed in the backward pass (gradient checkpointing)."""
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return self._gradient_checkpointing_func(block, *inputs)
        return block(*inputs)

    def compile_blocks(self, **options) -> MicroDiT:
        """``torch.compile`` each mixer and backbone block in place (regional compilation); returns ``self``.

        One graph per block (forward and backward), so a step dispatches a few calls per block instead of
        dozens of ops; parameter names and checkpoints are unchanged. Blocks of different widths
        (layer-wise scaling) compile separately, so the first step pays one compilation per distinct
        block shape (docs/benchmarks.md measures it). ``options`` go to ``torch.compile``
        (default ``dynamic=False``: a fixed mask ratio and batch give static shapes)::

            model = MicroDiT.from_preset("micro").compile_blocks()
        """
        blocks = [*self.mixer, *self.blocks]
        limit = torch._dynamo.config.recompile_limit     # the blocks share one code object: a graph per block
        torch._dynamo.config.recompile_limit = max(limit, 4 * len(blocks))
        for block in blocks:
            block.compile(**{"dynamic": False, **options})
        return self

    def unpatchify(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(B, T, p*p*C) -> (B, C, H, W), tokens in row-major order, values laid out (p, p, C)."""
        p, c = self.arch.patch_size, self.arch.in_channels
        x = tokens.reshape(tokens.shape[0], h // p, w // p, p, p, c)              # (B, h, w, p, p, C)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(tokens.shape[0], c, h, w)  # (B, C, H, W)

    # ---------------------------------------------------------------- constructors and I/O
    @classmethod
    def from_preset(cls, name: str, **overrides) -> MicroDiT:
        """Build a preset (``xl_2``, ``tiny_2``, ``micro``, ``nano``) with field overrides."""
        return cls(**to_dict(preset_config(name, **overrides)))

    def load_weights(self, path: str | Path) -> MicroDiT:
        """Load weights saved by ``save_pretrained`` into this model, checking the configs match.

        Raises ``ValueError`` naming every differing field when the saved model was built with
        another config (for example another width or caption_dim).
        """
        path = Path(path)
        config_file = path / self.config_name
        if not config_file.is_file():
            raise MissingFileError(f"{path} is not a saved MicroDiT: missing {self.config_name} "
                                    f"(expected a folder written by model.save_pretrained)")
        saved = {k: v for k, v in json.loads(config_file.read_text()).items() if not k.startswith("_")}
        diff = config_diff(saved, to_dict(self.arch))
        if diff:
            raise InputError(f"cannot load {path} into this MicroDiT, the configs differ: {format_diff(diff)}. "
                             f"Build the model with MicroDiT.from_pretrained({str(path)!r}) instead.")
        loaded = type(self).from_pretrained(path)
        self.load_state_dict(loaded.state_dict())
        return self

    # ---------------------------------------------------------------- introspection
    def parameter_groups(self) -> dict[str, int]:
        """Parameter counts by part: embedders, caption path, mixer, backbone dense, backbone MoE, final layer."""
        def count(*modules: nn.Module) -> int:
            return sum(p.numel() for m in modules for p in m.parameters())

        backbone_moe = sum(count(b.ffn) for b in self.blocks if isinstance(b.ffn, ExpertChoiceMoE))
        return {
            "embedders": count(self.patch_embed, self.t_embed, *self._levers(self.stem)),
            "caption path": count(self.caption_embed, self.mixer_caption),
            "patch-mixer": count(self.mixer_in, self.mixer, self.mixer_out),
            "backbone dense": count(self.blocks, *self._levers(self.skip_joins)) - backbone_moe,
            "backbone MoE": backbone_moe,
            "final layer": count(self.final_layer, *self._levers(self.out_conv)),
        }

    @staticmethod
    def _levers(*modules) -> list[nn.Module]:
        """The locality modules that are switched on (``None`` when off)."""
        return [m for m in modules if m is not None]

    def moe_parameters(self) -> int:
        """Parameters in all expert-choice MoE layers (mixer and backbone): experts plus gates."""
        return sum(p.numel() for m in self.modules() if isinstance(m, ExpertChoiceMoE) for p in m.parameters())

    def active_parameters_per_token(self) -> int:
        """Parameters a token passes through on average: each MoE token visits ``capacity`` of ``E`` experts."""
        total = sum(p.numel() for p in self.parameters())
        for m in self.modules():
            if isinstance(m, ExpertChoiceMoE):
                experts = m.w1.numel() + m.w2.numel()
                total -= experts - round(experts * min(1.0, m.capacity / m.num_experts))
        return total

    def summary(self) -> ModelSummary:
        """A table of parameters by part (also an HTML table in notebooks)."""
        return ModelSummary(self)

    def flops(self, latent_size: int | None = None, mask_ratio: float = 0.0, batch: int = 1,
              caption_len: int = 77) -> int:
        """Analytic forward FLOPs (2 per multiply-add of every matmul, conv and attention product).

        ``latent_size`` is the latent side (default ``config.sample_size``). Elementwise work
        (norms, activations, softmax) is not counted, like ``torch.utils.flop_counter``.
        """
        cfg = self.arch
        side = latent_size or cfg.sample_size
        if side % cfg.patch_size:
            raise InputError(f"latent_size {side} is not divisible by patch_size={cfg.patch_size}")
        tokens = (side // cfg.patch_size) ** 2
        kept = tokens if mask_ratio == 0 else int(tokens * (1 - mask_ratio))
        w, L, out_dim = cfg.width, caption_len, cfg.patch_size ** 2 * cfg.in_channels
        mixer_plans, backbone_plans = block_plans(cfg)
        mw = cfg.mixer_width if mixer_plans else w

        def block_flops(d: int, n: int, plan: BlockPlan) -> int:
            a = plan.attn_dim
            f = 2 * w * 6 * d                                         # adaLN
            f += 2 * n * (d * 3 * a + a * d) + 4 * n * n * a           # self-attention
            f += 2 * n * 2 * d * d + 2 * L * 2 * d * d + 4 * n * L * d  # cross-attention
            if plan.moe:
                k = tokens_per_expert(n, cfg.num_experts, cfg.expert_capacity)
                f += 2 * n * d * cfg.num_experts + 2 * cfg.num_experts * k * 2 * d * plan.ffn_hidden
            else:
                f += 2 * n * 3 * d * plan.ffn_hidden
            return f

        stem = cfg.conv_stem or cfg.in_channels
        total = 2 * tokens * stem * cfg.patch_size ** 2 * w                         # patch embed
        if cfg.conv_stem:
            total += ConvStem.flops(cfg.in_channels, cfg.conv_stem, side)
        if cfg.long_skips:
            total += LongSkips.flops(cfg.depth, w, kept)
        if cfg.output_conv:
            total += OutputConv.flops(cfg.in_channels, side)
        total += 2 * (cfg.timestep_freqs * w + w * w)                                 # timestep MLP
        caption_ffn = swiglu_hidden(w, cfg.caption_mlp_ratio, cfg.ffn_multiple_of)
        total += 2 * L * (cfg.caption_dim * w + w * w)                                # caption projection
        total += 2 * L * 4 * w * w + 4 * L * L * w + 2 * L * 3 * w * caption_ffn      # caption block
        total += 2 * 2 * w * w                                                        # pooled MLP
        if mixer_plans and mw != w:
            total += 2 * tokens * w * mw + 2 * L * w * mw + 2 * kept * mw * w          # mixer projections
        total += sum(block_flops(mw, tokens, plan) for plan in mixer_plans)
        total += sum(block_flops(w, kept, plan) for plan in backbone_plans)
        total += 2 * w * 2 * w + 2 * kept * w * out_dim                               # final layer
        return batch * total


# the signature that diffusers' ConfigMixin reads: exactly the MicroDiTConfig fields
MicroDiT.__init__.__signature__ = inspect.Signature(
    [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    + [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default)
       for f in dataclasses.fields(MicroDiTConfig)])


class ModelSummary:
    """Parameters of a :class:`MicroDiT` by part; prints as text, renders as HTML in notebooks."""

    def __init__(self, model: MicroDiT):
        self.rows = model.parameter_groups()
        self.total = sum(p.numel() for p in model.parameters())
        self.active_per_token = model.active_parameters_per_token()
        self.moe = model.moe_parameters()
        self.config = to_dict(model.arch)

    def as_dict(self) -> dict:
        """JSON-able summary: parts, params, active_params_per_token, moe_params."""
        return {"parts": self.rows, "params": self.total, "active_params_per_token": self.active_per_token,
                "moe_params": self.moe}

    def __str__(self) -> str:
        lines = [f"{'part':<18}{'parameters':>16}"]
        lines += [f"{name:<18}{n:>16,}" for name, n in self.rows.items()]
        lines += [f"{'total':<18}{self.total:>16,}", f"{'active per token':<18}{self.active_per_token:>16,}",
                  f"{'(of which MoE)':<18}{self.moe:>16,}"]
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        cells = "".join(f"<tr><td>{k}</td><td style='text-align:right'>{v:,}</td></tr>" for k, v in self.rows.items())
        cells += f"<tr><th>total</th><th style='text-align:right'>{self.total:,}</th></tr>"
        cells += f"<tr><td>active per token</td><td style='text-align:right'>{self.active_per_token:,}</td></tr>"
        cells += f"<tr><td>(of which MoE)</td><td style='text-align:right'>{self.moe:,}</td></tr>"
        return f"<table><tr><th>part</th><th>parameters</th></tr>{cells}</table>"
