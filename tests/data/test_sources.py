"""Image-caption sources: every bad sample is skipped with its reason, bad specs fail fast."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from tests.data.conftest import BLUE, CAPTION, EXPECTED, MIN_SIDE, RED, encode, noise, write_tar
from workbench.data.images import decode_image, to_rgb
from workbench.data.sources import SKIP_REASONS, SourceRecord, open_source, parse_source_spec, preprocess


def reasons(source, **kwargs) -> dict[str, str | None]:
    """{key: skip_reason} over all records, asserting keys of good records are unique."""
    out, good = {}, set()
    for rec in source.records(**kwargs):
        assert isinstance(rec, SourceRecord)
        assert rec.skip_reason is None or rec.skip_reason in SKIP_REASONS, rec
        if rec.ok:
            assert rec.image.mode == "RGB" and rec.caption and rec.key not in good
            good.add(rec.key)
        else:
            assert rec.image is None and rec.detail
        out.setdefault(rec.key, rec.skip_reason)
    return out


def good_records(source) -> dict[str, SourceRecord]:
    return {rec.key: rec for rec in source.records() if rec.ok}


def rgb_at(rec: SourceRecord, x: int, y: int) -> np.ndarray:
    return np.asarray(rec.image, dtype=int)[y, x]                               # (3,)


# ---------------------------------------------------------------------------------------------
#  Image folder
# ---------------------------------------------------------------------------------------------

def test_imagefolder_skips_every_bad_sample_with_its_reason(bad_folder):
    source = open_source(bad_folder, min_side=MIN_SIDE)
    assert source.kind == "imagefolder"
    got = reasons(source)
    assert {k: got[k] for k in EXPECTED} == EXPECTED
    assert set(got) == set(EXPECTED) | {"dup"}
    assert source.size_hint == len(EXPECTED) + 2                  # dup.jpg and dup.png


def test_imagefolder_duplicate_key_keeps_the_first_file(bad_folder):
    recs = [r for r in open_source(bad_folder).records() if r.key == "dup"]
    assert [r.skip_reason for r in recs] == [None, "duplicate_key"]
    assert "dup.png" in recs[1].detail and "dup.jpg" in recs[1].detail


def test_imagefolder_converts_every_mode_to_rgb_correctly(bad_folder):
    good = good_records(open_source(bad_folder, min_side=MIN_SIDE))
    assert np.abs(rgb_at(good["cmyk"], 16, 12) - (255, 0, 0)).max() <= 12   # CMYK (0,255,255,0) is red
    assert tuple(rgb_at(good["la"], 2, 2)) == (255, 255, 255)               # transparent -> white
    assert tuple(rgb_at(good["la"], 30, 2)) == (100, 100, 100)
    assert tuple(rgb_at(good["palette"], 2, 2)) == RED
    assert tuple(rgb_at(good["palette"], 30, 2)) == BLUE
    assert tuple(rgb_at(good["palette_transparent"], 2, 2)) == (255, 255, 255)
    assert tuple(rgb_at(good["palette_transparent"], 30, 2)) == BLUE
    assert tuple(rgb_at(good["rgba"], 2, 2)) == (255, 255, 255)
    assert tuple(rgb_at(good["rgba"], 30, 2)) == RED
    assert tuple(rgb_at(good["grey16"], 5, 5)) == (128, 128, 128)          # scaled, not clipped to 255
    assert good["bom_caption"].caption == "with a BOM"
    assert good["good_jpeg"].caption == CAPTION.decode()


def test_imagefolder_metadata_jsonl_captions_and_broken_rows(metadata_folder):
    source = open_source(metadata_folder)
    got = reasons(source)
    assert got == {
        "a": None, "b": None, "c": "caption_not_utf8", "d": "empty_caption", "e": "missing_caption",
        "f": None, "g": "missing_caption", "sub/h": None, "ghost": "missing_image",
        "metadata.jsonl:5": "bad_metadata",
    }
    good = good_records(source)
    assert good["a"].caption == "first caption of a"                     # the first row wins
    assert good["b"].caption == "b uses the caption field"
    assert good["f"].caption == "f has a sidecar instead"
    assert good["sub/h"].caption == "in a subfolder"
    dups = [r for r in source.records() if r.key == "a" and r.skip_reason == "duplicate_key"]
    assert len(dups) == 1 and "line 3" in dups[0].detail


def test_imagefolder_caption_column_is_respected(metadata_folder):
    got = reasons(open_source(metadata_folder, caption_column="caption"))
    assert got["b"] is None and got["a"] == "missing_caption"


def test_imagefolder_reads_metadata_csv(tmp_path):
    (tmp_path / "x.png").write_bytes(encode(Image.new("RGB", (32, 24), RED), "PNG"))
    (tmp_path / "y.png").write_bytes(encode(Image.new("RGB", (32, 24), RED), "PNG"))
    (tmp_path / "metadata.csv").write_text('file_name,text\nx.png,"a red, square image"\ny.png,\n')
    recs = {r.key: r for r in open_source(tmp_path).records()}
    assert recs["x"].caption == "a red, square image" and recs["y"].skip_reason == "empty_caption"


# ---------------------------------------------------------------------------------------------
#  WebDataset shards
# ---------------------------------------------------------------------------------------------

def test_webdataset_skips_every_bad_sample_with_its_reason(shards):
    source = open_source(shards, min_side=MIN_SIDE)
    assert source.kind == "webdataset" and source.size_hint is None
    got = reasons(source)
    assert {k: got[k] for k in EXPECTED} == EXPECTED
    assert {k: got[k] for k in set(got) - set(EXPECTED)} == {
        "json_caption": None, "bad_json": "bad_metadata", "no_image": "missing_image", "extras": None}


def test_webdataset_duplicate_key_across_shards_keeps_the_first(shards):
    recs = [r for r in open_source(shards).records() if r.key == "good_jpeg"]
    assert [r.skip_reason for r in recs] == [None, "duplicate_key"]
    assert "shard-001.tar" in recs[1].detail and "shard-000.tar" in recs[1].detail
    assert tuple(rgb_at(recs[0], 5, 5)) == pytest.approx(RED, abs=8)


def test_webdataset_converts_modes_and_reads_json_captions(shards):
    good = good_records(open_source(shards, min_side=MIN_SIDE))
    assert tuple(rgb_at(good["rgba"], 2, 2)) == (255, 255, 255)
    assert tuple(rgb_at(good["grey16"], 5, 5)) == (128, 128, 128)
    assert good["json_caption"].caption == "from json"
    assert tuple(rgb_at(good["json_caption"], 3, 3)) == BLUE
    assert good["extras"].caption == "with extras"


def test_webdataset_reads_gzipped_shards(tmp_path):
    good = encode(Image.new("RGB", (32, 24), BLUE), "PNG")
    with tarfile.open(tmp_path / "s.tar.gz", "w:gz") as tar:
        for name, data in [("k.png", good), ("k.txt", CAPTION), ("j.png", b""), ("j.txt", CAPTION)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert reasons(open_source(tmp_path)) == {"k": None, "j": "zero_byte"}


def test_webdataset_damaged_shards_cost_only_their_tail(truncated_shards):
    recs = list(open_source(truncated_shards).records())
    assert [(r.key, r.skip_reason) for r in recs] == [
        ("a0", None),
        ("s0", None), ("s1", None), ("s2", "corrupt_shard"),             # b.tar is cut inside s2.png
        ("c.tar", "corrupt_shard"),                                       # not a tar at all
        ("d0", None),                                                     # the run goes on
    ]


def test_webdataset_truncated_header_is_reported(tmp_path):
    good = encode(Image.new("RGB", (32, 24), RED), "PNG")
    path = write_tar(tmp_path / "x.tar", [("k0.png", good), ("k0.txt", CAPTION), ("k1.png", good), ("k1.txt", CAPTION)])
    with tarfile.open(path) as tar:
        cut = tar.getmember("k1.png").offset + 300                        # inside k1.png's header
    path.write_bytes(path.read_bytes()[:cut])
    assert [(r.key, r.skip_reason) for r in open_source(path).records()] == [("k0", None), ("x.tar", "corrupt_shard")]


# ---------------------------------------------------------------------------------------------
#  Saved datasets (load_from_disk)
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def saved_dataset(tmp_path):
    import datasets

    images = [{"bytes": encode(Image.new("RGB", (32, 24), c), "PNG"), "path": None} for c in (RED, BLUE)]
    images += [{"bytes": b"not an image", "path": None}, images[0], images[1]]
    ds = datasets.Dataset.from_dict(
        {"img": images, "prompt": ["red", "blue", "broken", None, "dup"], "id": ["r", "b", "x", "n", "r"],
         "text": ["t"] * 5},
        features=datasets.Features({"img": datasets.Image(), "prompt": datasets.Value("string"),
                                    "id": datasets.Value("string"), "text": datasets.Value("string")}))
    path = tmp_path / "saved"
    ds.save_to_disk(str(path))
    return path


def test_hf_disk_round_trip_with_chosen_columns(saved_dataset):
    source = open_source(saved_dataset, image_column="img", caption_column="prompt", key_column="id")
    assert source.kind == "hf_disk" and source.size_hint == 5
    recs = list(source.records())
    assert [(r.key, r.skip_reason) for r in recs] == [
        ("r", None), ("b", None), ("x", "not_an_image"), ("n", "missing_caption"), ("r", "duplicate_key")]
    assert (recs[0].caption, tuple(rgb_at(recs[0], 1, 1))) == ("red", RED)
    assert (recs[1].caption, tuple(rgb_at(recs[1], 1, 1))) == ("blue", BLUE)
    assert [r.key for r in source.records(start=3)] == ["n", "r"]
    assert source.records(start=4).__next__().skip_reason == "duplicate_key"   # keys before start count


def test_hf_disk_defaults_and_fails_fast_on_unknown_columns(saved_dataset):
    source = open_source(saved_dataset, image_column="img")
    assert source.describe()["caption_column"] == "text"
    assert [r.key for r in source.records()][:2] == ["000000000", "000000001"]
    with pytest.raises(ValueError, match="image_column='image'.*columns are"):
        open_source(saved_dataset)
    with pytest.raises(ValueError, match="caption_column='nope'"):
        open_source(saved_dataset, image_column="img", caption_column="nope")


# ---------------------------------------------------------------------------------------------
#  open_source: kinds, fail-fast errors, resume, describe
# ---------------------------------------------------------------------------------------------

def test_open_source_infers_each_kind(bad_folder, shards, saved_dataset):
    assert open_source(bad_folder).kind == "imagefolder"
    assert open_source(shards).kind == "webdataset"
    assert open_source(shards / "shard-000.tar").kind == "webdataset"
    assert open_source(saved_dataset, image_column="img").kind == "hf_disk"
    assert open_source("shapes").kind == "shapes"
    assert open_source(f"imagefolder:{bad_folder}").kind == "imagefolder"
    assert parse_source_spec("shapes:val") == ("shapes", "val")


def test_open_source_fails_fast_naming_problem_and_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*save_to_disk"):
        open_source(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_source(f"webdataset:{tmp_path / 'missing'}")
    with pytest.raises(ValueError, match="unsupported source kind 's3'.*download"):
        open_source("s3://bucket/shards")
    with pytest.raises(ValueError, match="unsupported source kind 'parquet'"):
        open_source("parquet:/data/shards")
    with pytest.raises(ValueError, match="no images found.*metadata.jsonl"):
        open_source(tmp_path)
    (tmp_path / "notes.csv").write_text("x")
    with pytest.raises(ValueError, match="unsupported source file"):
        open_source(tmp_path / "notes.csv")
    with pytest.raises(TypeError, match="unknown options"):
        open_source(tmp_path, resolution=32)
    with pytest.raises(ValueError, match="split"):
        open_source("shapes:test")


@pytest.mark.parametrize("fixture", ["bad_folder", "shards", "metadata_folder"])
def test_records_start_resumes_exactly(fixture, request):
    source = open_source(request.getfixturevalue(fixture), min_side=MIN_SIDE)

    def summary(records):
        return [(r.key, r.skip_reason, r.caption) for r in records]

    everything = summary(source.records())
    for start in (0, 1, 7, len(everything) - 1, len(everything)):
        assert summary(source.records(start=start)) == everything[start:]


def test_limit_counts_records(shards, bad_folder):
    assert len(list(open_source(shards, limit=5).records())) == 5
    assert len(list(open_source(bad_folder, limit=3).records(start=1))) == 2


def test_describe_is_json_and_tracks_file_changes(bad_folder):
    before = open_source(bad_folder, min_side=MIN_SIDE)
    json.dumps(before.describe())
    assert before.config_hash() == open_source(bad_folder, min_side=MIN_SIDE).config_hash()
    assert before.config_hash() != open_source(bad_folder, min_side=MIN_SIDE + 1).config_hash()
    (bad_folder / "good_jpeg.txt").write_text("a longer, changed caption")
    assert open_source(bad_folder, min_side=MIN_SIDE).describe()["fingerprint"] != before.describe()["fingerprint"]


def test_to_dataset_holds_only_good_records(bad_folder, tmp_path):
    ds = open_source(bad_folder, min_side=MIN_SIDE).to_dataset(cache_dir=tmp_path / "cache")
    assert set(ds["key"]) == {k for k, r in EXPECTED.items() if r is None} | {"dup"}
    assert ds[0]["image"].mode == "RGB"


def test_shapes_source_records_carry_ground_truth():
    source = open_source("shapes:val", n=6, resolution=32, seed=3)
    recs = list(source.records())
    assert len(recs) == source.size_hint == 6 and all(r.ok and r.image.size == (32, 32) for r in recs)
    assert recs[0].key == "shapes-val-3-00000000" and json.loads(recs[0].meta["objects"])
    assert [r.key for r in source.records(start=4)] == [r.key for r in recs[4:]]
    assert source.describe()["split"] == "val"


# ---------------------------------------------------------------------------------------------
#  Decode and preprocess
# ---------------------------------------------------------------------------------------------

def test_decode_image_reports_reason_without_raising():
    assert decode_image(b"").reason == "zero_byte"
    assert decode_image(b"\x89PNG\r\n\x1a\n" + b"\0" * 40).reason in ("corrupt_image", "not_an_image")
    assert decode_image(encode(noise(), "PNG"), min_side=25).reason == "too_small"
    assert decode_image(encode(noise(), "PNG"), min_side=24).image.size == (32, 24)


def test_to_rgb_scales_32bit_and_float_greys():
    assert to_rgb(Image.fromarray(np.full((2, 2), 65535, dtype=np.int32), "I")).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.fromarray(np.full((2, 2), 0.5, dtype=np.float32), "F")).getpixel((0, 0)) == (128, 128, 128)


@pytest.mark.parametrize("size", [(120, 60), (60, 120), (64, 64), (20, 10)])
def test_preprocess_resizes_short_side_and_centre_crops(size):
    w, h = size
    image = Image.new("RGB", size, BLUE)
    r = min(size) // 8                                                    # mark = 1/4 of the short side
    image.paste(RED, (w // 2 - r, h // 2 - r, w // 2 + r, h // 2 + r))     # a red mark at the centre
    out = preprocess(image, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert out[8, 8, 0] > 150 and out[8, 8, 2] < 100                       # centre stays red
    assert tuple(out[0, 0]) == BLUE and tuple(out[-1, -1]) == BLUE


def test_preprocess_equals_crop_then_resize_and_drops_the_sides():
    x = np.linspace(0, 255, 90)                                           # (W,)
    pixels = np.stack(np.broadcast_arrays(x[None, :], np.full((30, 1), 80.0), x[None, ::-1]), -1)  # (H, W, 3)
    image = Image.fromarray(pixels.astype(np.uint8), "RGB")
    out = preprocess(image, 15).astype(int)                               # (15, 15, 3)
    ref = np.asarray(image.crop((30, 0, 60, 30)).resize((15, 15), Image.Resampling.BICUBIC), dtype=int)
    assert np.abs(out - ref).mean() < 2
    assert 70 < out[:, :, 0].min() and out[:, :, 0].max() < 185            # outer thirds are cropped away
