"""Tiny randomly initialised models saved to disk, for tests that must run offline and fast.

Plain builders (call them with any folder)::

    save_tiny_vae(dir)          # diffusers AutoencoderKL, 2 blocks (f=2), 4 latent channels, ~44k params
    save_tiny_clip(dir)         # CLIPTextModel + CLIPTokenizer (byte-level BPE over a tiny vocab)
    save_tiny_clip(dir, full=True)  # a full CLIPModel (text + vision towers) + tokenizer
    save_tiny_t5(dir)           # T5EncoderModel + T5Tokenizer (unigram, built without sentencepiece)

Session-scoped pytest fixtures return those folders (``tiny_vae_dir``, ``tiny_clip_dir``, ``tiny_clip_full_dir``,
``tiny_t5_dir``); tests/conftest.py registers this module with ``pytest_plugins``, so any test can ask for them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

WORDS = (
    "a an the one two three red green blue yellow purple orange white black circle circles square "
    "squares triangle triangles star left right top bottom of and on in small large big"
).split()
VAE_SCALING, VAE_SHIFT = 0.7, 0.2  # deliberately not 1 / 0 so tests can see them applied


def _quiet():
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def save_tiny_vae(path, seed: int = 0, **overrides) -> Path:
    """Save a tiny ``AutoencoderKL`` (block_out_channels (8, 16): downsample 2, 4 latent channels)."""
    from diffusers import AutoencoderKL

    cfg = dict(
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=8,
        sample_size=32, scaling_factor=VAE_SCALING, shift_factor=VAE_SHIFT,
    )
    cfg.update(overrides)
    torch.manual_seed(seed)
    AutoencoderKL(**cfg).save_pretrained(path)
    return Path(path)


def _clip_tokenizer():
    """A CLIPTokenizer over a-z, one merge chain per word in WORDS, and CLIP's two special tokens."""
    from transformers import CLIPTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {c: i for i, c in enumerate(list(letters) + [c + "</w>" for c in letters])}
    merges = []
    for word in WORDS:  # merge left to right: r+e -> re, re+d</w> -> red</w>
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            pair, merged = (pieces[0], pieces[1]), pieces[0] + pieces[1]
            if pair not in merges:
                merges.append(pair)
            vocab.setdefault(merged, len(vocab))
            pieces = [merged] + pieces[2:]
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges)


def save_tiny_clip(path, full: bool = False, hidden: int = 32, seed: int = 0) -> Path:
    """Save a tiny CLIP text model (or, with ``full``, a whole CLIPModel) and its tokenizer."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel

    _quiet()
    tok = _clip_tokenizer()
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    text = CLIPTextConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=16,
        bos_token_id=tok.convert_tokens_to_ids("<|startoftext|>"), eos_token_id=eos, pad_token_id=eos,
    )
    torch.manual_seed(seed)
    if full:
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                      image_size=32, patch_size=16)
        model = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision, projection_dim=16))
    else:
        model = CLIPTextModel(text)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return Path(path)


def save_tiny_t5(path, d_model: int = 32, seed: int = 0) -> Path:
    """Save a tiny T5EncoderModel and a unigram T5Tokenizer built from a word list (no sentencepiece)."""
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    _quiet()
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    pieces += [("▁" + w, -1.0) for w in WORDS] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    tok = T5Tokenizer(vocab=pieces, extra_ids=0)
    config = T5Config(vocab_size=len(pieces), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2,
                      num_heads=4, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(seed)
    T5EncoderModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    return Path(path)


# ---------------------------------------------------------------------------------------------
#  Session-scoped fixtures (built once per test run)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tiny_vae_dir(tmp_path_factory) -> Path:
    """Folder with a tiny AutoencoderKL (f=2, 4 channels, scaling 0.7, shift 0.2)."""
    return save_tiny_vae(tmp_path_factory.mktemp("tiny_vae"))


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """Folder with a tiny CLIPTextModel (hidden 32, 77 positions) + CLIPTokenizer."""
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="session")
def tiny_clip_full_dir(tmp_path_factory) -> Path:
    """Folder with a tiny full CLIPModel (text + vision) + CLIPTokenizer."""
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip_full"), full=True)


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory) -> Path:
    """Folder with a tiny T5EncoderModel (d_model 32) + T5Tokenizer."""
    return save_tiny_t5(tmp_path_factory.mktemp("tiny_t5"))
