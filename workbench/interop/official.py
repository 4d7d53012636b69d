"""The paper's released MicroDiT checkpoints, converted into workbench checkpoints.

The official code (Sehwag et al. 2025) saves a ``DiT`` whose tensors have other names than ours
(``x_embedder`` -> ``patch_embed``, ``adaLN_modulation.1`` -> ``adaln``, ...) but the same shapes
and arithmetic. ``convert_official`` renames every tensor, checks the buffers we compute (the
sin-cos positions and the zero mask token), and writes a checkpoint folder that SamplerPanel,
MaskExplorer, ``workbench export`` and a stage's ``init_from`` open like any other::

    from workbench.interop import convert_official
    convert_official("MicroDiT_XL_2_sdxl_vae.pt", "models/microdit-xl2", arch="xl_2",
                     vae="/models/sdxl-vae", text_encoder="/models/dfn5b-clip-h14")
    # workbench convert-official MicroDiT_XL_2_sdxl_vae.pt --arch xl_2 --out models/microdit-xl2

The converted config sets ``caption_mask_compat``: like the official code, the model attends to
all 77 caption token states, padding included. docs/interop.md walks through the whole path.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from ..config import MicroDiTConfig, check_known_keys, from_dict, to_dict
from ..errors import InputError, MissingFileError, WorkbenchError
from ..model import MicroDiT
from ..model.embeddings import sincos_2d_positions
from ..model.microdit import PRESETS, preset_config
from ..train import checkpoint as ckpt

OFFICIAL_ARCHS = ("xl_2", "tiny_2")
# where the paper's encoders live on the hub, recorded when no local folder is given at conversion
DEFAULT_VAES = {4: "stabilityai/sdxl-vae", 16: "ostris/vae-kl-f8-d16"}
DEFAULT_TEXT_ENCODER = "apple/DFN5B-CLIP-ViT-H-14-378"
COMPUTED_BUFFERS = ("pos_embed", "mask_token")          # official buffers that MicroDiT computes instead
POSITION_SCALES = (1.0, 2.0, 4.0, 0.5)                  # pos_interp_scale values tried against pos_embed

# Official name -> workbench name, applied in order to every key.
RENAMES = [
    (r"^x_embedder\.proj\.", "patch_embed.proj."),
    (r"^t_embedder\.mlp\.0\.", "t_embed.fc1."),
    (r"^t_embedder\.mlp\.2\.", "t_embed.fc2."),
    (r"^y_embedder\.y_proj\.", "caption_embed.proj."),
    (r"^y_emb_preprocess\.", "caption_embed.block."),
    (r"^pooled_y_emb_process\.", "caption_embed.pool_mlp."),
    (r"^patch_mixer_map_xin\.", "mixer_in."),
    (r"^patch_mixer_map_xout\.", "mixer_out."),
    (r"^patch_mixer_map_y\.", "mixer_caption."),
    (r"^patch_mixer\.(\d+)\.", r"mixer.\1."),
    (r"^final_layer\.norm_final\.", "final_layer.norm."),
    (r"\.adaLN_modulation\.1\.", ".adaln."),
    (r"\.cross_attn\.q_linear\.", ".cross_attn.q."),
    (r"\.cross_attn\.kv_linear\.", ".cross_attn.kv."),
    (r"^(caption_embed\.block|mixer\.\d+|blocks\.\d+)\.mlp\.", r"\1.ffn."),
]


class OfficialCheckpointError(WorkbenchError):
    """An official checkpoint that cannot be converted; the message lists every problem."""


def workbench_name(official: str) -> str:
    """The MicroDiT name of an official ``DiT`` tensor name (unknown names come back unchanged)."""
    for pattern, repl in RENAMES:
        official = re.sub(pattern, repl, official)
    return official


# ---------------------------------------------------------------------------------------------
#  Reading
# ---------------------------------------------------------------------------------------------

def _first_line(err: BaseException) -> str:
    """An exception's first line, at most 120 characters (its type when it has no text)."""
    text = str(err).strip()
    return text.splitlines()[0][:120] if text else type(err).__name__


def _looks_like_torch_save(path: Path) -> bool:
    """Whether ``path`` starts like a ``torch.save`` file: a zip archive, or a legacy pickle (protocol 2+)."""
    import zipfile

    with open(path, "rb") as f:
        head = f.read(2)
    return zipfile.is_zipfile(path) or (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def read_official_state_dict(path: str | Path, allow_pickle: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """The ``DiT`` tensors of an official checkpoint, and notes on what was stripped.

    Accepts a plain state dict (``.pt``/``.bin`` or ``.safetensors``), a Composer checkpoint (the model
    state under ``state.model``, whose ``vae.``/``text_encoder.`` tensors are left out), and
    ``module.``/``dit.`` prefixes. ``.pt`` files load with ``weights_only=True``; a Composer checkpoint
    that also pickles Python objects needs ``allow_pickle=True`` (only for files you trust).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(f"no official checkpoint at {path}: download one of the paper's MicroDiT_XL_2 "
                                f"checkpoints first (docs/interop.md lists them)")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            raw = load_file(str(path))
        except SafetensorError as err:                      # random bytes, a truncated download
            raise OfficialCheckpointError(f"{path} is not a complete safetensors file ({err}); download it "
                                          f"again (a truncated download looks like this)") from err
    else:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
        except pickle.UnpicklingError as err:
            if allow_pickle or not _looks_like_torch_save(path):
                raise OfficialCheckpointError(f"{path} is not a readable PyTorch checkpoint ({_first_line(err)}); "
                                              f"download it again") from err
            raise OfficialCheckpointError(
                f"{path} holds Python objects besides tensors (a Composer checkpoint keeps its training state "
                f"that way), which weights_only loading refuses; if you trust the file, convert it with "
                f"--allow-pickle (convert_official(..., allow_pickle=True))") from err
        except Exception as err:         # noqa: BLE001 - garbage makes torch's unpickler raise anything
            raise OfficialCheckpointError(f"{path} is not a readable PyTorch checkpoint ({_first_line(err)}); "
                                          f"download it again") from err
    state = _find_state_dict(raw, path)
    notes: dict = {}
    while state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
        notes.setdefault("stripped_prefixes", []).append("module.")
    if any(k.startswith("dit.") for k in state):
        others = sorted({k.split(".", 1)[0] + "." for k in state if not k.startswith("dit.")})
        state = {k[len("dit."):]: v for k, v in state.items() if k.startswith("dit.")}
        notes.setdefault("stripped_prefixes", []).append("dit.")
        if others:
            notes["left_out"] = others            # a Composer LatentDiffusion also holds its vae. / text_encoder.
    bad = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise OfficialCheckpointError(f"{path}: entries that are not tensors: {', '.join(bad)}")
    return state, notes


def _find_state_dict(raw, path: Path) -> dict:
    """The model state dict inside a loaded checkpoint object."""
    if not isinstance(raw, Mapping):
        raise OfficialCheckpointError(f"{path} holds a {type(raw).__name__}, not a state dict")
    if isinstance(raw.get("state"), Mapping) and isinstance(raw["state"].get("model"), Mapping):
        return dict(raw["state"]["model"])                  # Composer
    for key in ("state_dict", "model"):
        if isinstance(raw.get(key), Mapping):
            return dict(raw[key])
    return dict(raw)


# ---------------------------------------------------------------------------------------------
#  Config and renaming
# ---------------------------------------------------------------------------------------------

def official_config(arch: str | None = "xl_2", in_channels: int | None = None,
                    overrides: Mapping | None = None) -> MicroDiTConfig:
    """The MicroDiT config of an official model: a preset (``xl_2``, ``tiny_2``) or, with ``arch=None``, the
    defaults, then ``overrides`` (MicroDiTConfig fields, e.g. from ``--config custom.yaml``) and
    ``in_channels``; ``caption_mask_compat`` is always on, as the official code ignores caption masks."""
    overrides = dict(overrides or {})
    check_known_keys(MicroDiTConfig, overrides)
    if in_channels is not None:
        overrides["in_channels"] = int(in_channels)
    overrides["caption_mask_compat"] = True
    if arch is None:
        return from_dict(MicroDiTConfig, overrides)
    if arch not in OFFICIAL_ARCHS and arch not in PRESETS:
        raise InputError(f"unknown arch {arch!r}: the paper released {' and '.join(OFFICIAL_ARCHS)}")
    return preset_config(arch, **overrides)


def _positions_config(cfg: MicroDiTConfig, pos_embed: torch.Tensor) -> tuple[MicroDiTConfig, list[str]]:
    """``cfg`` with ``sample_size`` and ``pos_interp_scale`` read off the official ``pos_embed`` buffer."""
    tokens, width = pos_embed.shape[-2:]
    side = round(tokens ** 0.5)
    if side * side != tokens or width != cfg.width:
        return cfg, [f"pos_embed: shape {tuple(pos_embed.shape)} is not a square grid of width {cfg.width}"]
    tol = 1e-4 if pos_embed.dtype == torch.float32 else 1e-2
    for scale in dict.fromkeys((cfg.pos_interp_scale, *POSITION_SCALES)):
        expected = sincos_2d_positions(width, side, side, scale)            # (T, D)
        if torch.allclose(pos_embed.reshape(tokens, width).float(), expected, atol=tol):
            return from_dict(MicroDiTConfig, {**to_dict(cfg), "sample_size": side * cfg.patch_size,
                                              "pos_interp_scale": scale}), []
    return cfg, [f"pos_embed: not the 2-D sin-cos positions of a {side}x{side} grid at any pos_interp_scale in "
                 f"{POSITION_SCALES}"]


def convert_state_dict(official: Mapping[str, torch.Tensor], cfg: MicroDiTConfig) -> tuple[dict, MicroDiTConfig]:
    """Rename an official ``DiT`` state dict for a MicroDiT of ``cfg``; return (state dict, final config).

    ``sample_size`` and ``pos_interp_scale`` come from the official ``pos_embed`` when it is present.
    Raises ``OfficialCheckpointError`` listing every missing, unmapped or mis-shaped tensor at once.
    """
    problems = []
    if "pos_embed" in official:
        cfg, problems = _positions_config(cfg, official["pos_embed"])
    if "mask_token" in official and bool(official["mask_token"].abs().max() > 0):
        problems.append("mask_token: expected all zeros (the official mask token is a zero buffer)")
    with torch.device("meta"):                                              # shapes only: no memory, no init time
        model_shapes = {k: tuple(v.shape) for k, v in MicroDiT(**to_dict(cfg)).state_dict().items()}
    renamed, unmapped, mis_shaped = {}, [], []
    for key, tensor in official.items():
        if key in COMPUTED_BUFFERS:
            continue
        ours = workbench_name(key)
        if ours not in model_shapes:
            unmapped.append(key)
        elif tuple(tensor.shape) != model_shapes[ours]:
            mis_shaped.append(f"{key} -> {ours}: checkpoint {tuple(tensor.shape)}, model {model_shapes[ours]}")
        else:
            renamed[ours] = tensor.float()
    mapped = {workbench_name(k) for k in official}
    missing = [k for k in model_shapes if k not in mapped]
    for label, keys in (("missing (MicroDiT tensors the checkpoint lacks)", missing),
                        ("unmapped (checkpoint tensors with no MicroDiT counterpart)", unmapped),
                        ("shape mismatch", mis_shaped)):
        if keys:
            problems.append(f"{label}: " + ", ".join(keys))
    if problems:
        hint = ("check --arch and --in-channels, or describe a custom model with --config"
                if mis_shaped or missing else "the checkpoint does not come from the official DiT")
        raise OfficialCheckpointError(f"cannot convert to a MicroDiT (width {cfg.width}, depth {cfg.depth}, "
                                      f"{cfg.in_channels} channels): " + "; ".join(problems) + f". {hint}")
    return renamed, cfg


# ---------------------------------------------------------------------------------------------
#  The conversion
# ---------------------------------------------------------------------------------------------

def _vae_downsample(path: str) -> int:
    """The spatial downsample of a local AutoencoderKL folder (from its config.json); 8, the paper's VAEs', else."""
    config = Path(path) / "config.json"
    if config.is_file():
        return 2 ** (len(json.loads(config.read_text()).get("block_out_channels", [0] * 4)) - 1)
    return 8


def convert_official(path: str | Path, out: str | Path, arch: str | None = "xl_2", *, in_channels: int | None = None,
                     config: Mapping | str | Path | None = None, vae: str | Path | None = None,
                     text_encoder: str | Path | None = None, allow_pickle: bool = False) -> Path:
    """Convert an official MicroDiT checkpoint into a workbench checkpoint ``out/step_0000000``; return its path.

    Args:
        path: the official ``.pt`` (plain state dict or Composer checkpoint) or ``.safetensors``.
        out: the folder to write (it then opens with ``load_for_sampling``, SamplerPanel, MaskExplorer,
            ``workbench export`` and a stage's ``init_from``).
        arch: ``xl_2`` or ``tiny_2`` (the paper's presets), or None with ``config``.
        in_channels: 4 (SDXL VAE) or 16 (Ostris VAE); default the preset's 4.
        config: MicroDiTConfig fields (a dict or a YAML file) for widths and depths that match no preset.
        vae, text_encoder: local folders of the VAE and the text encoder the model was trained with,
            recorded for sampling; default the paper's hub names, which sampling asks you to download.
        allow_pickle: load a ``.pt`` that pickles Python objects (only files you trust).

    Example::

        convert_official("MicroDiT_XL_2_sdxl_vae.pt", "models/microdit-xl2", vae="/models/sdxl-vae",
                         text_encoder="/models/dfn5b-clip-h14")
    """
    if isinstance(config, (str, Path)):
        import yaml

        config = yaml.safe_load(Path(config).read_text()) or {}
        if not isinstance(config, dict):
            raise InputError(f"--config: expected a YAML mapping of MicroDiTConfig fields, got {type(config).__name__}")
    state, notes = read_official_state_dict(path, allow_pickle)
    cfg = official_config(arch, in_channels, config)
    weights, cfg = convert_state_dict(state, cfg)
    with torch.device("meta"):                      # no second copy of the weights, no init time
        model = MicroDiT(**to_dict(cfg))
    model.load_state_dict(weights, strict=True, assign=True)
    model.mask_token = torch.zeros_like(model.mask_token, device="cpu")      # the one non-persistent buffer
    def local(p) -> str:                                   # a local folder as an absolute path, a hub name as is
        return str(Path(p).expanduser().resolve()) if Path(p).expanduser().exists() else str(p)

    codec = local(vae or DEFAULT_VAES.get(cfg.in_channels, DEFAULT_VAES[4]))
    record = {
        "codec": f"vae:{codec}",
        "text_encoder": {"spec": local(text_encoder or DEFAULT_TEXT_ENCODER), "max_length": 77, "trim_padding": False,
                         "dim": cfg.caption_dim},
        "resolution": cfg.sample_size * _vae_downsample(codec), "sigma_data": 0.9, "prompts": [], "cfg_scale": 5.0,
        "steps": 30,
    }
    extra = {"converted_from": str(Path(path).expanduser().resolve()), "official_arch": arch, **notes}
    return ckpt.save_checkpoint(out, 0, model=model, state=ckpt.TrainingState(step=0, extra=extra),
                                sampling=record, final=True)
