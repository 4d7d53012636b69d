"""Prepare: latents + caption embeddings on disk; exact round trip, resumable, fails fast on bad setups."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.data.conftest import EXPECTED, MIN_SIDE
from tests.data.prepare_worker import KWARGS as WORKER_KWARGS
from tests.data.prepare_worker import run as worker_run
from workbench.cli import build_parser
from workbench.cli import main as cli_main
from workbench.data.codecs import PixelCodec, open_codec
from workbench.data.prepare import _Preparer, prepare
from workbench.data.prepared_format import INFO_FILE, REPORT_FILE, SHARDS_DIR, PreparedInfo, from_arrow, load_prepared
from workbench.data.sources import SKIP_REASONS, Source, SourceRecord, open_source, preprocess
from workbench.data.text import open_text_encoder
from workbench.errors import WorkbenchError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def clip(tiny_clip_dir):  # noqa: F811
    """The tiny CLIP text encoder, loaded once for this module."""
    return open_text_encoder(str(tiny_clip_dir))


def raw_columns(path) -> dict[str, np.ndarray | list]:
    """Every column of a prepared folder exactly as stored (fp16 stays fp16)."""
    import datasets

    ds = datasets.load_from_disk(str(path))
    info = PreparedInfo.read(path)
    table = ds.data.table
    out = {f"latents_{r}": np.array(from_arrow(table.column(f"latents_{r}"), s)) for r, s in info.latent_shapes.items()}
    out["caption_emb"] = np.array(from_arrow(table.column("caption_emb"), (info.caption_length, info.caption_dim)))
    out["caption_mask"] = from_arrow(table.column("caption_mask"), (info.caption_length,))
    out["caption"] = table.column("caption").to_pylist()
    out["source_key"] = table.column("source_key").to_pylist()
    return out


def good_records(spec, **kw):
    return [rec for rec in open_source(spec, **kw).records() if rec.ok]


# ---------------------------------------------------------------------------------------------
#  Output, round trip, real model folders
# ---------------------------------------------------------------------------------------------

def test_prepared_data_round_trips_exactly(tmp_path, clip):
    out = tmp_path / "prep"
    report = prepare("shapes", out, codec="pixel", text_encoder=clip, resolutions=(16, 32), limit=20, n=20,
                     progress=False)
    assert (report.seen, report.written, report.skipped) == (20, 20, {})
    cols = raw_columns(out)
    recs = good_records("shapes", n=20, resolution=32)
    assert cols["source_key"] == [r.key for r in recs] and cols["caption"] == [r.caption for r in recs]
    for r in (16, 32):
        assert cols[f"latents_{r}"].dtype == np.float16 and cols[f"latents_{r}"].shape == (20, 3, r, r)
        pixels = np.stack([preprocess(rec.image, r) for rec in recs])                    # (20, r, r, 3)
        stored = torch.from_numpy(cols[f"latents_{r}"].astype(np.float32))              # (20, 3, r, r)
        assert np.array_equal(PixelCodec().decode(stored), pixels)                      # exact pixels back
        assert np.array_equal(cols[f"latents_{r}"], PixelCodec().encode(pixels).half().numpy())
    unique = list(dict.fromkeys(cols["caption"]))                                       # how prepare batches them
    states, masks = clip.encode(unique)                                                  # (u, 77, 32), (u, 77)
    row = {c: i for i, c in enumerate(unique)}
    idx = [row[c] for c in cols["caption"]]
    assert cols["caption_emb"].dtype == np.float16 and cols["caption_emb"].shape == (20, 77, 32)
    assert np.array_equal(cols["caption_emb"], states.half().numpy()[idx])
    assert np.array_equal(cols["caption_mask"], masks.numpy()[idx])
    single, _ = clip.encode([cols["caption"][0]])                                      # batch-independent
    first = torch.tensor(cols["caption_emb"][0], dtype=torch.float32)                 # (77, 32)
    torch.testing.assert_close(first, single[0], atol=2e-3, rtol=2e-3)

    ds = load_prepared(out)                                                              # torch format
    assert len(ds) == 20 and ds.column_names == ["latents_16", "latents_32", "caption_emb", "caption_mask",
                                                  "caption", "source_key"]
    assert torch.equal(ds[3]["latents_32"], torch.from_numpy(cols["latents_32"][3]).float())
    assert ds[3]["caption_mask"].dtype == torch.bool


def test_prepare_with_tiny_vae_and_clip_loaded_by_path(tmp_path, tiny_vae_dir, tiny_clip_dir):  # noqa: F811
    out = tmp_path / "prep"
    report = prepare("shapes", out, codec=f"vae:{tiny_vae_dir}", text_encoder=str(tiny_clip_dir),
                     resolutions="16,32", limit=6, n=6, codec_options={"sample_posterior": False}, progress=False)
    assert report.written == 6
    info = PreparedInfo.read(out)
    assert info.channels == 4 and info.latent_shapes == {16: (4, 8, 8), 32: (4, 16, 16)}
    assert (info.caption_length, info.caption_dim) == (77, 32) and info.num_rows == 6
    data = json.loads((out / REPORT_FILE).read_text())
    codec = open_codec(f"vae:{tiny_vae_dir}", sample_posterior=False)
    assert data["codec"]["config_hash"] == codec.config_hash() and data["codec"]["kind"] == "vae"
    assert data["text_encoder"]["model_class"] == "CLIPTextModel"
    assert data["text_encoder"]["config_hash"] == open_text_encoder(str(tiny_clip_dir)).config_hash()
    assert data["elapsed_s"] > 0 and data["resolutions"] == [16, 32] and data["source"]["kind"] == "shapes"
    cols = raw_columns(out)
    recs = good_records("shapes", n=6, resolution=32)
    for r in (16, 32):
        expected = codec.encode(np.stack([preprocess(rec.image, r) for rec in recs])).half().numpy()  # (6, 4, r/2, r/2)
        np.testing.assert_allclose(cols[f"latents_{r}"].astype(np.float32), expected.astype(np.float32),
                                   atol=1e-3, rtol=1e-3)


def test_prepare_skips_bad_samples_and_lists_them_in_report(tmp_path, bad_folder, clip):
    out = tmp_path / "prep"
    report = prepare(bad_folder, out, codec="pixel", text_encoder=clip, resolutions=(16,), min_side=MIN_SIDE,
                     progress=False)
    data = json.loads((out / REPORT_FILE).read_text())
    listed = {e["key"]: reason for reason, entries in data["skipped"].items() for e in entries}
    bad = {k: v for k, v in EXPECTED.items() if v}
    assert listed == {**bad, "dup": "duplicate_key"}
    assert all(reason in SKIP_REASONS for reason in data["skipped"])
    truncated = next(e for e in data["skipped"]["corrupt_image"] if e["key"] == "truncated_png")
    assert truncated["detail"]
    good = sorted([k for k, v in EXPECTED.items() if v is None] + ["dup"])
    assert sorted(raw_columns(out)["source_key"]) == good
    assert data["counts"] == {"seen": len(EXPECTED) + 2, "written": len(good), "skipped": len(bad) + 1,
                              "skipped_by_reason": report.skipped}
    assert report.skipped["corrupt_image"] == 2 and report.skipped["duplicate_key"] == 1


class _ListSource(Source):
    """A source over fixed records (for prepare-level behaviour such as duplicate keys)."""

    kind = "list"

    def __init__(self, records):
        super().__init__()
        self._records = records

    def _count(self):
        return len(self._records)

    def _iter_records(self, start):
        yield from self._records[start:]

    def describe(self):
        return {"kind": "list", "keys": [r.key for r in self._records]}


def test_duplicate_keys_are_written_once_even_across_a_resume(tmp_path, clip, monkeypatch):
    from PIL import Image

    img = Image.new("RGB", (8, 8), (200, 10, 10))
    recs = [SourceRecord(k, img, f"a red square {k}", None) for k in ("a", "b", "c", "a", "d", "b")]
    monkeypatch.setattr("workbench.data.sources.open_source", lambda *a, **k: _ListSource(recs))
    out = tmp_path / "prep"
    calls = []
    original = _Preparer.write_shard

    def crash_on_second_shard(self, start, *args):
        calls.append(start)
        if len(calls) == 2:
            raise KeyboardInterrupt                                   # a crash after shard 0 is complete
        return original(self, start, *args)

    monkeypatch.setattr(_Preparer, "write_shard", crash_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        prepare("shapes", out, text_encoder=clip, resolutions=(8,), shard_size=3, progress=False)
    monkeypatch.setattr(_Preparer, "write_shard", original)
    report = prepare("shapes", out, text_encoder=clip, resolutions=(8,), shard_size=3, progress=False)
    assert report.resumed_from == 3
    assert raw_columns(out)["source_key"] == ["a", "b", "c", "d"]
    assert sorted(e["key"] for e in report.skipped_keys["duplicate_key"]) == ["a", "b"]


class _OverflowCodec(PixelCodec):
    """A pixel codec whose latents overflow fp16 for mostly-red images (a stand-in for a broken VAE)."""

    def encode(self, images, generator=None):
        lat = super().encode(images)                                                    # (B, 3, H, W)
        red = torch.from_numpy((images[..., 0] > 150).mean(axis=(1, 2)) > 0.9)          # (B,)
        lat[red] = 1e6                                                                  # > fp16 max 65504
        return lat


def test_a_sample_whose_latents_overflow_fp16_is_skipped_not_fatal(tmp_path, clip, monkeypatch):
    from PIL import Image

    recs = [SourceRecord("red", Image.new("RGB", (8, 8), (220, 0, 0)), "a red square", None),
            SourceRecord("blue", Image.new("RGB", (8, 8), (0, 0, 220)), "a blue square", None)]
    monkeypatch.setattr("workbench.data.sources.open_source", lambda *a, **k: _ListSource(recs))
    report = prepare("shapes", tmp_path / "p", codec=_OverflowCodec(), text_encoder=clip, resolutions=(8,),
                     progress=False)
    assert raw_columns(tmp_path / "p")["source_key"] == ["blue"]
    assert report.skipped_keys["non_finite"] == [{"key": "red", "detail": "latents_8 not finite in fp16"}]


def test_a_source_without_good_samples_is_an_error_naming_the_top_reasons(tmp_path, clip, monkeypatch, capsys):
    recs = [SourceRecord("x", None, None, "zero_byte", "file is empty (0 bytes)", file="x.png"),
            SourceRecord("y", None, None, "not_an_image", "cannot identify image file", file="sub/y.jpg"),
            SourceRecord("z", None, None, "not_an_image", "cannot identify image file", file="z.jpg")]
    monkeypatch.setattr("workbench.data.sources.open_source", lambda *a, **k: _ListSource(recs))
    with pytest.raises(WorkbenchError) as caught:
        prepare("shapes", tmp_path / "p", text_encoder=clip, resolutions=(8,), progress=False)
    message = str(caught.value)
    assert message.startswith("0 of 3 images usable in ")
    assert "not_an_image 2 (e.g. sub/y.jpg: cannot identify image file); zero_byte 1 (e.g. x.png:" in message
    assert not (tmp_path / "p" / INFO_FILE).exists()                    # not a dataset anyone can train on
    assert json.loads((tmp_path / "p" / REPORT_FILE).read_text())["counts"]["written"] == 0

    # the CLI, even with --no-progress, fails with that one line
    capsys.readouterr()
    assert cli_main(["prepare", "--source", "shapes", "--out", str(tmp_path / "q"), "--no-progress",
                     "--resolutions", "8", "--text-encoder", str(clip.path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 0 of 3 images usable") and err.count("\n") == 1


def test_random_bytes_named_jpg_without_a_caption_are_not_an_image_and_named_by_file(tmp_path, clip):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "cut.jpg").write_bytes(os.urandom(500))           # no caption either
    Image.new("RGB", (32, 32), (200, 0, 0)).save(folder / "red.png")
    (folder / "red.txt").write_text("a red square")
    prepare(folder, tmp_path / "p", text_encoder=clip, resolutions=(16,), progress=False)
    skipped = json.loads((tmp_path / "p" / REPORT_FILE).read_text())["skipped"]
    assert skipped == {"not_an_image": [{"key": "sub/cut", "detail": skipped["not_an_image"][0]["detail"],
                                         "file": "sub/cut.jpg"}]}


def test_captions_longer_than_the_encoder_are_counted_once(tmp_path, clip, monkeypatch, capsys):
    long = " ".join(["red"] * (clip.max_length + 5))
    recs = [SourceRecord(f"k{i}", Image.new("RGB", (16, 16)), long if i < 2 else "red", None) for i in range(4)]
    monkeypatch.setattr("workbench.data.sources.open_source", lambda *a, **k: _ListSource(recs))
    prepare("shapes", tmp_path / "p", text_encoder=clip, resolutions=(8,), progress=False)
    assert json.loads((tmp_path / "p" / REPORT_FILE).read_text())["captions_truncated"] == 1   # one distinct caption
    lines = [line for line in capsys.readouterr().out.splitlines() if "longer than" in line]
    assert lines == [f"1 distinct caption(s) were longer than the text encoder's {clip.max_length} tokens and were "
                     f"cut there (report.json: captions_truncated)"]


# ---------------------------------------------------------------------------------------------
#  Resume
# ---------------------------------------------------------------------------------------------

def test_rerun_after_a_crash_resumes_after_the_last_complete_shard(tmp_path, clip, monkeypatch):
    kw = dict(codec="pixel", text_encoder=clip, resolutions=(16,), limit=24, n=24, shard_size=6, batch_size=4,
              progress=False)
    encoded = []
    original_encode = clip.encode
    monkeypatch.setattr(clip, "encode", lambda caps: encoded.extend(caps) or original_encode(caps))
    original = _Preparer.write_shard

    def crash_in_third_shard(self, start, end, rows, skips, t0):
        if start == 12:                                               # die half-way through saving shard 2
            (self.writer.shards / f"shard_{start:010d}.tmp").mkdir(parents=True)
            (self.writer.shards / f"shard_{start:010d}.tmp" / "data-00000-of-00001.arrow").write_bytes(b"partial")
            raise KeyboardInterrupt
        return original(self, start, end, rows, skips, t0)

    monkeypatch.setattr(_Preparer, "write_shard", crash_in_third_shard)
    with pytest.raises(KeyboardInterrupt):
        prepare("shapes", tmp_path / "a", **kw)
    assert not (tmp_path / "a" / INFO_FILE).exists()
    with pytest.raises(ValueError, match="has not finished: rerun the same prepare command"):
        load_prepared(tmp_path / "a")
    starts = []

    def record(self, start, *args):
        starts.append(start)
        return original(self, start, *args)

    monkeypatch.setattr(_Preparer, "write_shard", record)
    encoded.clear()
    report = prepare("shapes", tmp_path / "a", **kw)
    assert report.resumed_from == 12 and report.seen == 24 and report.written == 24
    assert starts == [12, 18]                                         # shards 0 and 1 were kept, not redone
    assert set(encoded) <= {r.caption for r in good_records("shapes", n=24, resolution=16)[12:]}
    assert not (tmp_path / "a" / SHARDS_DIR).exists()

    prepare("shapes", tmp_path / "b", **kw)                          # uninterrupted
    a, b = raw_columns(tmp_path / "a"), raw_columns(tmp_path / "b")
    assert a["source_key"] == b["source_key"] and len(set(a["source_key"])) == 24
    for name in ("latents_16", "caption_emb", "caption_mask"):
        assert np.array_equal(a[name], b[name]), name


def test_same_settings_on_a_complete_folder_do_nothing(tmp_path, clip, capsys):
    kw = dict(text_encoder=clip, resolutions=(8,), limit=4, n=4)
    prepare("shapes", tmp_path / "p", progress=False, **kw)
    data_file = next((tmp_path / "p").glob("data-*.arrow"))
    stamp = data_file.stat().st_mtime_ns
    report = prepare("shapes", tmp_path / "p", progress=True, **kw)
    assert report.nothing_to_do and report.written == 4
    assert "nothing to do" in capsys.readouterr().out
    assert data_file.stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_loses_and_duplicates_nothing(tmp_path, tiny_vae_dir, tiny_clip_dir):  # noqa: F811
    out = tmp_path / "killed"
    log = open(tmp_path / "worker.log", "w")
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "data" / "prepare_worker.py"), str(out),
                             str(tiny_vae_dir), str(tiny_clip_dir), "0.4"], cwd=REPO, stdout=log, stderr=log)
    shards = out / SHARDS_DIR
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline:
            done = [p for p in shards.glob("shard_*") if not p.name.endswith(".tmp")] if shards.is_dir() else []
            if len(done) >= 2 or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"worker ended before it was killed: {(tmp_path / 'worker.log').read_text()}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / INFO_FILE).exists()
    n_shards = len([p for p in shards.glob("shard_*") if not p.name.endswith(".tmp")])
    assert 2 <= n_shards < WORKER_KWARGS["limit"] // WORKER_KWARGS["shard_size"]

    resumed = worker_run(out, tiny_vae_dir, tiny_clip_dir)
    assert resumed.resumed_from >= 2 * WORKER_KWARGS["shard_size"] and resumed.seen == WORKER_KWARGS["limit"]
    reference = worker_run(tmp_path / "uninterrupted", tiny_vae_dir, tiny_clip_dir)
    assert reference.resumed_from == 0
    a, b = raw_columns(out), raw_columns(tmp_path / "uninterrupted")
    assert len(a["source_key"]) == len(set(a["source_key"])) == WORKER_KWARGS["limit"]   # none duplicated
    assert a["source_key"] == b["source_key"]                                              # none lost
    for name in ("latents_8", "latents_16", "caption_emb", "caption_mask"):
        assert np.array_equal(a[name], b[name]), name                                     # same posterior samples


# ---------------------------------------------------------------------------------------------
#  Bad setups stop before any work
# ---------------------------------------------------------------------------------------------

def test_missing_source_path_stops_before_work(tmp_path, clip):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare(tmp_path / "no_such_folder", tmp_path / "out", text_encoder=clip, progress=False)
    assert not (tmp_path / "out").exists()


def test_unreadable_model_paths_stop_before_work(tmp_path, clip):
    with pytest.raises(FileNotFoundError, match=r"--codec .*not a folder.*AutoencoderKL"):
        prepare("shapes", tmp_path / "out", codec=f"vae:{tmp_path / 'no_vae'}", text_encoder=clip, progress=False)
    empty = tmp_path / "empty_model"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"--text-encoder .*no config.json"):
        prepare("shapes", tmp_path / "out", text_encoder=str(empty), progress=False)
    (empty / "config.json").write_text("{}")
    (empty / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match=r"--codec .*could not load an AutoencoderKL"):
        prepare("shapes", tmp_path / "out", codec=f"vae:{empty}", text_encoder=clip, progress=False)
    assert not (tmp_path / "out").exists()


def test_resolution_the_codec_cannot_produce_stops_before_work(tmp_path, tiny_vae_dir, clip):  # noqa: F811
    with pytest.raises(ValueError, match=r"--resolutions: resolution 15 cannot be produced .*\(e\.g\. 14 or 16\)"):
        prepare("shapes", tmp_path / "out", codec=f"vae:{tiny_vae_dir}", text_encoder=clip, resolutions=(16, 15),
                progress=False)
    with pytest.raises(ValueError, match="comma-separated integers"):
        prepare("shapes", tmp_path / "out", text_encoder=clip, resolutions="32,big", progress=False)
    assert not (tmp_path / "out").exists()


def test_out_folder_from_other_settings_stops_before_work(tmp_path, clip):
    out = tmp_path / "p"
    prepare("shapes", out, text_encoder=clip, resolutions=(8,), limit=4, n=4, progress=False)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(ValueError, match=r"holds a prepared dataset made with other settings \(.*limit: 4 -> 5.*"
                                         r"Choose another --out, or delete"):
        prepare("shapes", out, text_encoder=clip, resolutions=(8,), limit=5, n=4, progress=False)
    with pytest.raises(ValueError, match=r"resolutions: \[8\] -> \[8, 16\]"):
        prepare("shapes", out, text_encoder=clip, resolutions=(8, 16), limit=4, n=4, progress=False)
    assert sorted(p.name for p in out.iterdir()) == before
    (out / INFO_FILE).unlink()                                      # now it looks like an unfinished run
    with pytest.raises(ValueError, match="holds an unfinished prepare run made with other settings"):
        prepare("shapes", out, text_encoder=clip, resolutions=(8,), limit=4, n=4, seed=1, progress=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not written by workbench prepare"):
        prepare("shapes", foreign, text_encoder=clip, resolutions=(8,), limit=4, n=4, progress=False)


def test_load_prepared_refuses_folders_that_are_not_complete(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_prepared(tmp_path / "nothing")
    (tmp_path / "other").mkdir()
    with pytest.raises(ValueError, match="not a complete prepared dataset.*not written by workbench prepare"):
        PreparedInfo.read(tmp_path / "other")


# ---------------------------------------------------------------------------------------------
#  CLI
# ---------------------------------------------------------------------------------------------

def test_cli_arguments_run_prepare(tmp_path, tiny_clip_dir, capsys):  # noqa: F811
    assert cli_main(["prepare", "--source", "shapes:val", "--text-encoder", str(tiny_clip_dir), "--resolutions",
                     "8,16", "--out", str(tmp_path / "cli"), "--limit", "5", "--option", "n=5",
                     "--trim-padding", "--max-length", "16", "--no-progress", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["counts"]["written"] == 5 and printed["source"]["split"] == "val"
    info = PreparedInfo.read(tmp_path / "cli")
    assert info.resolutions == (8, 16) and info.caption_length == 16 and info.text_encoder["trim_padding"]


def test_cli_unknown_source_option_is_a_clear_error(tmp_path, tiny_clip_dir):  # noqa: F811
    args = build_parser().parse_args(["prepare", "--text-encoder", str(tiny_clip_dir), "--out", str(tmp_path / "cli"),
                                      "--option", "colour=red", "--no-progress"])
    with pytest.raises(ValueError, match=r"unknown options \['colour'\]"):
        args.fn(args)
    assert not (tmp_path / "cli").exists()


def _hostile_folder(root: Path) -> Path:
    """Two good images, plus a FIFO, a link to /dev/zero, a dangling link, a link loop and a non-UTF-8 name."""
    from tests.data.conftest import BLUE, CAPTION, encode

    root.mkdir()
    for key in ("good1", "good2"):
        (root / f"{key}.png").write_bytes(encode(Image.new("RGB", (32, 32), BLUE), "PNG"))
        (root / f"{key}.txt").write_bytes(CAPTION)
    os.mkfifo(root / "pipe.png")
    (root / "pipe.txt").write_bytes(CAPTION)
    (root / "zero.png").symlink_to("/dev/zero")
    (root / "gone.png").symlink_to(root / "does-not-exist.png")
    (root / "loop.png").symlink_to(root / "loop.png")
    bad = os.fsencode(str(root)) + b"/bad\xff.png"
    with open(bad, "wb") as f:
        f.write(encode(Image.new("RGB", (32, 32), BLUE), "PNG"))
    with open(os.fsencode(str(root)) + b"/bad\xff.txt", "wb") as f:
        f.write(CAPTION)
    return root


@pytest.mark.timeout(120)
def test_a_fifo_device_broken_links_and_bad_names_are_skipped_with_reasons_not_waited_on(tmp_path, capsys):
    root = _hostile_folder(tmp_path / "hostile")
    out = tmp_path / "prep"
    assert cli_main(["prepare", "--source", str(root), "--out", str(out), "--resolutions", "16", "--no-progress",
                     "--json"]) == 0
    data = json.loads((out / REPORT_FILE).read_text())
    reasons = {e["key"]: reason for reason, entries in data["skipped"].items() for e in entries}
    assert reasons == {"pipe": "not_a_file", "zero": "not_a_file", "gone": "broken_link", "loop": "broken_link",
                       "bad\\xff": "bad_file_name"}
    assert sorted(raw_columns(out)["source_key"]) == ["good1", "good2"]
    assert not list(out.rglob("shard_*.tmp"))


def test_a_file_over_the_size_bound_is_skipped_unread(tmp_path, monkeypatch):
    from tests.data.conftest import BLUE, CAPTION, encode
    from workbench.data.sources import base

    root = tmp_path / "big"
    root.mkdir()
    for key, side in (("small", 32), ("large", 512)):
        (root / f"{key}.png").write_bytes(encode(Image.new("RGB", (side, side), BLUE), "BMP"))
        (root / f"{key}.txt").write_bytes(CAPTION)
    monkeypatch.setattr(base, "MAX_FILE_BYTES", 100_000)
    records = list(open_source(str(root)).records())
    assert {r.key: r.skip_reason for r in records} == {"large": "too_large_file", "small": None}


def test_a_failed_shard_write_leaves_no_temp_shard(tmp_path, monkeypatch):
    import datasets

    def fail(self, *args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(datasets.Dataset, "save_to_disk", fail)  # fails inside the shard's temp folder
    with pytest.raises(OSError):
        prepare("shapes", tmp_path / "prep", resolutions=(16,), limit=8, progress=False, n=8)
    assert not list((tmp_path / "prep").rglob("shard_*.tmp"))


def test_prepare_no_progress_still_prints_the_summary_and_skip_counts(tmp_path, capsys):
    root = _hostile_folder(tmp_path / "hostile")
    assert cli_main(["prepare", "--source", str(root), "--out", str(tmp_path / "prep"), "--resolutions", "16",
                     "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "not_a_file" in out and "broken_link" in out and "2" in out, out
