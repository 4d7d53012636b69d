"""The MicroDiT model: blocks, expert-choice MoE, deferred masking, embeddings, presets."""

from ..data.caption_padding import trim_caption_padding
from .diagnostics import AttentionLocality, AttentionRecorder
from .embeddings import null_caption, sincos_2d_positions
from .microdit import PRESETS, MicroDiT, MicroDiTOutput, ModelSummary, preset_config

__all__ = ["AttentionLocality", "AttentionRecorder", "MicroDiT", "MicroDiTOutput", "ModelSummary", "PRESETS",
           "preset_config", "null_caption", "sincos_2d_positions", "trim_caption_padding"]
