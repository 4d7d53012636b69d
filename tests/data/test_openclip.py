"""The paper's text encoder from an open_clip folder: the same token ids and 77 token states as the official
precompute (open_clip's tokenizer, then its text tower's ln_final over all positions).

The fixture (tests/fixtures/openclip_text, README there) is a tiny open_clip CLIP saved by open_clip itself,
a tiny BPE vocabulary, and what open_clip and the official wrapper computed for five captions.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from workbench.data.prepare import prepare
from workbench.data.prepared_format import PreparedInfo, load_prepared, open_prepared_text_encoder
from workbench.data.text import TextEncoder, open_text_encoder

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "openclip_text"
CAPTIONS = json.loads((FIXTURE / "captions.json").read_text())


@pytest.fixture
def folder(tmp_path) -> Path:
    return Path(shutil.copytree(FIXTURE, tmp_path / "dfn5b-tiny"))


@pytest.fixture(scope="module")
def reference():
    return load_file(str(FIXTURE / "reference.safetensors"))


def test_token_ids_and_states_equal_open_clip_and_the_official_precompute(folder, reference):
    enc = open_text_encoder(str(folder), device="cpu")
    assert enc.kind == "open_clip" and enc.dim == 32 and enc.max_length == 77
    ids, mask = enc.tokenize(CAPTIONS)
    assert torch.equal(ids, reference["input_ids"])                 # padding with 0, truncation ending in EOT
    states, mask = enc.encode(CAPTIONS)
    assert states.shape == (5, 77, 32)
    torch.testing.assert_close(states, reference["states"], rtol=1e-5, atol=1e-5)
    assert states[2, 5:].abs().sum() > 0                            # padded positions are real states, not zeros
    assert mask[0].tolist() == [True] * 5 + [False] * 72            # the mask marks real tokens for masked models


def test_safetensors_weights_and_a_separate_tokenizer_folder(folder, reference, tmp_path):
    weights = torch.load(folder / "open_clip_pytorch_model.bin", weights_only=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_pytorch_model.bin").unlink()
    tokenizer = tmp_path / "tokenizer"
    tokenizer.mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.move(folder / name, tokenizer / name)
    enc = TextEncoder(folder, tokenizer_path=tokenizer, device="cpu")
    torch.testing.assert_close(enc.encode(CAPTIONS)[0], reference["states"], rtol=1e-5, atol=1e-5)


def test_missing_tokenizer_files_say_where_to_get_them(folder):
    (folder / "merges.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"no merges\.txt.*hf download openai/clip-vit-large-patch14"):
        TextEncoder(folder)


def test_a_missing_folder_says_how_to_download_the_weights():
    with pytest.raises(FileNotFoundError, match="hf download apple/DFN5B-CLIP-ViT-H-14-378"):
        open_text_encoder("apple/DFN5B-CLIP-ViT-H-14-378")


def test_text_tower_options_the_reader_cannot_express_are_refused(folder):
    config = json.loads((folder / "open_clip_config.json").read_text())
    config["model_cfg"]["text_cfg"]["ls_init_value"] = 1e-4
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="ls_init_value"):
        TextEncoder(folder)


def test_prepare_stores_the_open_clip_states_and_reopens_the_encoder(folder, tmp_path):
    out = tmp_path / "prepared"
    prepare(source="shapes", out=out, resolutions=(16,), limit=4, text_encoder=str(folder), progress=False)
    info = PreparedInfo.read(out)
    assert info.caption_length == 77 and info.caption_dim == 32 and info.text_encoder["kind"] == "open_clip"
    rows = load_prepared(out)
    enc = open_prepared_text_encoder(info, device="cpu")
    states, _ = enc.encode([rows[i]["caption"] for i in range(4)])
    torch.testing.assert_close(rows["caption_emb"][:4].float(), states, rtol=0, atol=2e-3)   # stored in fp16
