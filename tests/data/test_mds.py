"""MDS shards (MosaicML Streaming), read without the streaming package and imported as prepared data.

tests/fixtures/mds was written by mosaicml-streaming's own MDSWriter (README there); the other
datasets here are written by tests/data/mds_writer.py, which the first test shows is byte-identical.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.data.mds_writer import write_mds
from tests.data.tiny_models import save_tiny_vae
from workbench.cli import main
from workbench.data import mds_import as mds_module
from workbench.data.mds_import import import_mds
from workbench.data.mds_reader import MDSError, MDSReader
from workbench.data.prepared_format import PreparedInfo, load_prepared

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MDS = FIXTURES / "mds"
OPENCLIP = FIXTURES / "openclip_text"          # 77 x 32 token states
COLUMNS = {"caption": "str", "caption_latents": "bytes", "latents_16": "bytes", "latents_32": "bytes"}


def fixture_rows() -> list[dict]:
    """The values the fixture script drew, in its order (numpy default_rng(0))."""
    rng = np.random.default_rng(0)
    out = []
    for caption in ["a red circle", "two blue squares", "a green star left of a red circle", "", "caf\u00e9",
                    "a big triangle"]:
        out.append({"caption": caption, "caption_latents": rng.standard_normal((77, 32)).astype(np.float16),
                    "latents_16": rng.standard_normal((4, 8, 8)).astype(np.float16),
                    "latents_32": rng.standard_normal((4, 16, 16)).astype(np.float16)})
    return out


def as_mds(rows: list[dict]) -> list[dict]:
    return [{k: (v.tobytes() if isinstance(v, np.ndarray) else v) for k, v in r.items()} for r in rows]


@pytest.fixture(scope="module")
def vae(tmp_path_factory) -> Path:
    return save_tiny_vae(tmp_path_factory.mktemp("vae") / "vae")       # 4 channels, f = 2: 16 px -> 8 x 8


def test_the_reader_decodes_what_mdswriter_wrote():
    reader = MDSReader(MDS)                                   # one sub-folder per process, as the precompute writes
    assert len(reader) == 6 and reader.columns == COLUMNS and len(reader.shard_info) == 3
    for i, expected in enumerate(fixture_rows()):
        row = reader[i]
        assert row["caption"] == expected["caption"]
        for key in ("caption_latents", "latents_16", "latents_32"):
            assert row[key] == expected[key].tobytes()
    assert reader[-1]["caption"] == "a big triangle"
    with pytest.raises(IndexError):
        reader[6]


def test_the_test_writer_is_byte_identical_to_mdswriter(tmp_path):
    out = write_mds(tmp_path / "mds", COLUMNS, as_mds(fixture_rows()), per_shard=2, size_limit=20_000)
    for shard in ("shard.00000.mds", "shard.00001.mds", "shard.00002.mds"):
        assert (out / shard).read_bytes() == (MDS / "0" / shard).read_bytes()
    assert json.loads((out / "index.json").read_text()) == json.loads((MDS / "0" / "index.json").read_text())


def test_import_writes_a_prepared_dataset_with_the_same_numbers(tmp_path, vae):
    rows = fixture_rows()
    src = write_mds(tmp_path / "mds", COLUMNS, as_mds(rows), per_shard=4)
    info = import_mds(src, tmp_path / "prepared", vae=vae, text_encoder=OPENCLIP, progress=False)
    assert info.num_rows == 6 and info.resolutions == (16, 32)
    assert info.latent_shapes == {16: (4, 8, 8), 32: (4, 16, 16)}
    assert (info.caption_length, info.caption_dim) == (77, 32) and info.text_encoder["kind"] == "open_clip"
    assert PreparedInfo.read(tmp_path / "prepared").source["kind"] == "mds"
    ds = load_prepared(tmp_path / "prepared", format="numpy")
    for i, row in enumerate(rows):
        assert ds[i]["caption"] == row["caption"] and ds[i]["source_key"] == f"shard.{i // 4:05d}.mds:{i % 4}"
        assert np.array_equal(ds[i]["latents_32"], row["latents_32"].astype(np.float32))
        assert np.array_equal(ds[i]["caption_emb"], row["caption_latents"].astype(np.float32))
        assert ds[i]["caption_mask"].all()                          # the official model attends to all 77
    again = import_mds(src, tmp_path / "prepared", vae=vae, text_encoder=OPENCLIP, progress=False)
    assert again.fingerprint == info.fingerprint                    # complete: nothing to do


def test_an_interrupted_import_resumes_without_redoing_finished_shards(tmp_path, vae, monkeypatch):
    src = write_mds(tmp_path / "mds", COLUMNS, as_mds(fixture_rows()), per_shard=2)
    real, calls, died = mds_module._write_part, [], []

    class Killed(Exception):
        pass

    def dies_on_the_second(writer, first, end, shard, *args):
        calls.append(shard)
        if len(calls) == 2 and not died:
            died.append(shard)
            raise Killed
        real(writer, first, end, shard, *args)

    monkeypatch.setattr(mds_module, "_write_part", dies_on_the_second)
    with pytest.raises(Killed):
        import_mds(src, tmp_path / "out", vae=vae, text_encoder=OPENCLIP, progress=False)
    assert not (tmp_path / "out" / "prepared.json").exists()
    calls.clear()
    info = import_mds(src, tmp_path / "out", vae=vae, text_encoder=OPENCLIP, progress=False)
    assert calls == ["shard.00001.mds", "shard.00002.mds"] and info.num_rows == 6


def test_non_finite_rows_are_skipped_and_reported(tmp_path, vae):
    rows = fixture_rows()
    rows[1]["latents_16"] = rows[1]["latents_16"].copy()
    rows[1]["latents_16"][0, 0, 0] = np.nan
    src = write_mds(tmp_path / "mds", COLUMNS, as_mds(rows))
    info = import_mds(src, tmp_path / "out", vae=vae, text_encoder=OPENCLIP, progress=False)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert info.num_rows == 5 and report["counts"]["skipped_by_reason"] == {"non_finite": 1}
    assert report["skipped"]["non_finite"][0]["key"] == "shard.00000.mds:1"


def test_bad_folders_and_shards_get_clear_errors(tmp_path, vae):
    with pytest.raises(FileNotFoundError, match="no MDS folder"):
        MDSReader(tmp_path / "nowhere")
    src = write_mds(tmp_path / "mds", COLUMNS, as_mds(fixture_rows()))
    shard = src / "shard.00001.mds"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(MDSError, match=r"shard .*shard\.00001\.mds is truncated"):
        MDSReader(src)[2]
    index = json.loads((src / "index.json").read_text())
    index["shards"][0]["compression"] = "zstd:7"
    (src / "index.json").write_text(json.dumps(index))
    with pytest.raises(MDSError, match=r"compressed shards \(zstd:7\).*compression=None"):
        MDSReader(src)
    index["shards"][0]["compression"], index["shards"][0]["column_encodings"][0] = None, "pkl"
    (src / "index.json").write_text(json.dumps(index))
    with pytest.raises(MDSError, match=r"encodings \['pkl'\] are not supported"):
        MDSReader(src)


def test_latents_that_do_not_fit_the_given_vae_name_the_fix(tmp_path):
    wide = save_tiny_vae(tmp_path / "vae16", latent_channels=16)
    src = write_mds(tmp_path / "mds", COLUMNS, as_mds(fixture_rows()))
    with pytest.raises(MDSError, match=r"latents_16 holds 256 fp16 values.*\(16, 8, 8\).*--vae"):
        import_mds(src, tmp_path / "out", vae=wide, text_encoder=OPENCLIP, progress=False)


def test_the_cli_imports(tmp_path, vae, capsys):
    shutil.copytree(MDS, tmp_path / "mds")
    assert main(["import-mds", str(tmp_path / "mds"), "--out", str(tmp_path / "out"), "--vae", str(vae),
                 "--text-encoder", str(OPENCLIP)]) == 0
    assert "train on it with data:" in capsys.readouterr().out and PreparedInfo.read(tmp_path / "out").num_rows == 6


def _jpeg(color, size=40) -> bytes:
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="JPEG")
    return buf.getvalue()


def test_an_mds_folder_of_images_is_a_prepare_source(tmp_path):
    from workbench.data.prepare import prepare
    from workbench.data.sources import open_source

    rows = [{"jpg": _jpeg("red"), "caption": "a red square", "id": 0},
            {"jpg": b"not a jpeg at all", "caption": "broken", "id": 1},
            {"jpg": _jpeg("blue"), "caption": "   ", "id": 2},
            {"jpg": _jpeg("green", 8), "caption": "a tiny green square", "id": 3},
            {"jpg": _jpeg("white"), "caption": "a white square", "id": 4}]
    write_mds(tmp_path / "images" / "0", {"jpg": "jpeg", "caption": "str", "id": "int"}, rows)
    source = open_source(tmp_path / "images", min_side=16)
    assert source.describe()["kind"] == "mds" and source.size_hint == 5
    records = list(source.records())
    assert [r.skip_reason for r in records] == [None, "not_an_image", "empty_caption", "too_small", None]
    assert records[0].key == "0/shard.00000.mds:0" and records[0].image.size == (40, 40)
    assert [r.key for r in source.records(start=4)] == ["0/shard.00002.mds:0"]       # resume without decoding
    report = prepare(source=str(tmp_path / "images"), out=tmp_path / "prepared", resolutions=(16,), min_side=16,
                     progress=False)
    assert report.written == 2 and report.skipped == {"not_an_image": 1, "empty_caption": 1, "too_small": 1}
    with pytest.raises(ValueError, match=r"image_column: .* not 'photo'"):
        open_source(tmp_path / "images", image_column="photo")


def test_import_mds_and_prepare_share_the_writer_and_its_report(tmp_path, vae, monkeypatch):
    from workbench.data.prepare import prepare
    from workbench.data.prepared_writer import PreparedWriter

    finished, parts = [], []
    real_finish, real_write_part = PreparedWriter.finish, PreparedWriter.write_part

    def finish(self, **kwargs):
        finished.append(self.out.name)
        return real_finish(self, **kwargs)

    def write_part(self, start, end, *args, **kwargs):
        parts.append((self.out.name, start, end))
        return real_write_part(self, start, end, *args, **kwargs)

    monkeypatch.setattr(PreparedWriter, "finish", finish)
    monkeypatch.setattr(PreparedWriter, "write_part", write_part)
    src = write_mds(tmp_path / "mds", COLUMNS, as_mds(fixture_rows()), per_shard=4)
    import_mds(src, tmp_path / "imported", vae=vae, text_encoder=OPENCLIP, progress=False)
    prepare("shapes", tmp_path / "prepared", resolutions=(16,), n=4, shard_size=2, progress=False)
    assert finished == ["imported", "prepared"]
    assert parts == [("imported", 0, 4), ("imported", 4, 6), ("prepared", 0, 2), ("prepared", 2, 4)]
    imported, prepared = (json.loads((tmp_path / name / "report.json").read_text()) for name in finished)
    assert list(imported) == list(prepared) and list(imported["counts"]) == list(prepared["counts"])
    assert imported["source"]["kind"] == "mds" and imported["counts"]["written"] == 6
