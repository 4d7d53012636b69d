"""The paper's text encoder as open_clip saves it: the CLIP text tower of an open_clip folder.

The paper encodes captions with the DFN5B CLIP ViT-H/14 text tower (open_clip) and keeps all 77
token states (1024-d) after the final LayerNorm, padding positions included. An open_clip folder
(``open_clip_config.json`` + ``open_clip_pytorch_model.bin`` or ``open_clip_model.safetensors``, as
on the hub) is read here into the identical ``transformers.CLIPTextModel``: same tensors, same
causal attention, QuickGELU when the config says so. Tokens come from OpenAI CLIP's BPE
(``vocab.json`` + ``merges.txt``, the vocabulary open_clip ships), padded with id 0 like open_clip.

open_clip itself is not needed (it imports torchvision, which must match the installed torch).
``TextEncoder`` opens such a folder like any other::

    enc = TextEncoder("/models/dfn5b-clip-h14")     # open_clip files + vocab.json, merges.txt
    states, mask = enc.encode(["a red circle"])      # (1, 77, 1024): the official precompute's states
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import torch
from ..errors import InputError, MissingFileError

CONFIG_FILE = "open_clip_config.json"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
TOKENIZER_FILES = ("vocab.json", "merges.txt")
PAD_ID = 0                                    # open_clip pads token ids with 0
TOKENIZER_HINT = ("open_clip keeps OpenAI CLIP's BPE inside its package; put the same vocabulary beside the "
                  "weights: hf download openai/clip-vit-large-patch14 vocab.json merges.txt --local-dir DIR")
# text_cfg options that change the token states in ways CLIPTextModel cannot express
UNSUPPORTED = {"hf_model_name": None, "ls_init_value": None, "no_causal_mask": False, "embed_cls": False,
               "act_kwargs": None, "attentional_pool": False}


def is_openclip_folder(path: str | Path) -> bool:
    """True when ``path`` holds an open_clip model (``open_clip_config.json``)."""
    return (Path(path) / CONFIG_FILE).is_file()


def check_openclip_folder(path: Path, tokenizer_path: Path) -> None:
    """Raise ``FileNotFoundError`` naming what an open_clip folder lacks (weights, tokenizer files)."""
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise MissingFileError(f"open_clip folder {str(path)!r} has no weights (looked for {', '.join(WEIGHT_FILES)})")
    missing = [name for name in TOKENIZER_FILES if not (tokenizer_path / name).is_file()]
    if missing:
        raise MissingFileError(f"open_clip folder {str(tokenizer_path)!r} has no {' or '.join(missing)}: "
                                f"{TOKENIZER_HINT}")


def text_config(path: Path):
    """The ``CLIPTextConfig`` of an open_clip folder's text tower; a clear error for options it cannot express."""
    from transformers import CLIPTextConfig

    raw = json.loads((path / CONFIG_FILE).read_text())
    model_cfg = raw.get("model_cfg", raw)
    text = model_cfg.get("text_cfg") or {}
    odd = {k: text[k] for k, default in UNSUPPORTED.items() if text.get(k, default) != default}
    if odd:
        raise InputError(f"the open_clip text tower in {str(path)!r} uses {odd}, which this reader does not "
                         f"support (it reads plain CLIP text towers such as DFN5B's)")
    width, heads, vocab = int(text.get("width", 512)), int(text.get("heads", 8)), int(text.get("vocab_size", 49408))
    return CLIPTextConfig(
        vocab_size=vocab, hidden_size=width, num_attention_heads=heads,
        num_hidden_layers=int(text.get("layers", 12)), intermediate_size=int(width * text.get("mlp_ratio", 4.0)),
        max_position_embeddings=int(text.get("context_length", 77)),
        hidden_act="quick_gelu" if model_cfg.get("quick_gelu", False) else "gelu",
        layer_norm_eps=float((text.get("norm_kwargs") or {}).get("eps", 1e-5)),
        pad_token_id=PAD_ID, bos_token_id=vocab - 2, eos_token_id=vocab - 1)      # open_clip: SOT, EOT last


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    file = next(path / name for name in WEIGHT_FILES if (path / name).is_file())
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file))
    return torch.load(file, map_location="cpu", weights_only=True)


def text_state_dict(weights: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """open_clip text-tower tensors -> ``CLIPTextModel`` names (of its ``text_model`` before transformers 5); the
    image tower and the projections are left out."""
    out = {"embeddings.token_embedding.weight": weights["token_embedding.weight"],
           "embeddings.position_embedding.weight": weights["positional_embedding"],
           "final_layer_norm.weight": weights["ln_final.weight"],
           "final_layer_norm.bias": weights["ln_final.bias"]}
    for i in range(layers):
        src, dst = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        q, k, v = weights[src + "attn.in_proj_weight"].chunk(3)               # (3W, W) -> 3 x (W, W)
        qb, kb, vb = weights[src + "attn.in_proj_bias"].chunk(3)
        for name, w, b in (("q_proj", q, qb), ("k_proj", k, kb), ("v_proj", v, vb)):
            out[f"{dst}self_attn.{name}.weight"], out[f"{dst}self_attn.{name}.bias"] = w, b
        for ours, theirs in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                             ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
            for kind in ("weight", "bias"):
                out[f"{dst}{ours}.{kind}"] = weights[f"{src}{theirs}.{kind}"]
    return out


def load_text_model(path: str | Path):
    """The text tower of an open_clip folder as a ``CLIPTextModel`` (eval mode, float32)."""
    from transformers import CLIPTextModel

    path = Path(path)
    config = text_config(path)
    weights = _read_weights(path)
    try:
        state = text_state_dict(weights, config.num_hidden_layers)
    except KeyError as err:
        raise InputError(f"the open_clip weights in {str(path)!r} lack the text tensor {err.args[0]!r}; the folder's "
                         f"weights and {CONFIG_FILE} do not match") from err
    model = CLIPTextModel(config)
    tower = getattr(model, "text_model", model)            # transformers < 5 nests the transformer one level down
    own = tower.state_dict()
    shapes = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if v.shape != own[k].shape]
    if shapes:
        raise InputError(f"the open_clip weights in {str(path)!r} do not fit its {CONFIG_FILE}: {'; '.join(shapes)}")
    missing = [k for k in own if k not in state and not k.endswith("position_ids")]
    if missing:
        raise InputError(f"no open_clip tensor for {', '.join(missing)} in {str(path)!r}")
    tower.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    return model.eval()


def load_tokenizer(path: str | Path):
    """OpenAI CLIP's BPE tokenizer from ``vocab.json`` + ``merges.txt`` (transformers' ``CLIPTokenizer``)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(path))


def clean_caption(text: str) -> str:
    """open_clip's caption cleaning: ftfy (when installed), HTML entities unescaped twice, whitespace collapsed."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()
