"""The source registry: a new kind is one class in one file; an unknown kind fails listing the known ones.

The toy kind below is what a user writes in their own module (nothing in the package changes): it
is registered, recognised, listed in ``workbench prepare --help``, prepared with the real
``workbench prepare`` command and read back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from workbench.cli import main as cli_main
from workbench.data.prepared_format import load_prepared
from workbench.data.sources import (SOURCES_VERSION, Source, SourceRecord, base, open_source, register_source,
                                    skip_record, source_class, source_kinds, stat_line)
from workbench.io import fingerprint

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}


class ColourListSource(Source):
    """A folder with ``colours.txt``: one colour name per line, each a plain square captioned "a <colour> square"."""

    kind = "colours"
    summary = "a folder with colours.txt"
    options = {"side": "the square's side in pixels (default 16)"}

    @classmethod
    def recognise(cls, path: Path) -> str | None:
        return "a colours.txt" if (path / "colours.txt").is_file() else None

    def __init__(self, path, *, side: int = 16, limit: int | None = None):
        super().__init__(limit=limit)
        self.path, self.side = Path(path).resolve(), int(side)
        self.names = (self.path / "colours.txt").read_text().split()

    def _count(self) -> int:
        return len(self.names)

    def _iter_records(self, start: int) -> Iterator[SourceRecord]:
        for i, name in enumerate(self.names[start:self.size_hint], start):
            if name not in COLOURS:
                yield skip_record(f"{i:03d}", "missing_image", f"line {i + 1}: no colour {name!r}")
            else:
                yield SourceRecord(f"{i:03d}", Image.new("RGB", (self.side,) * 2, COLOURS[name]), f"a {name} square",
                                   None)

    def describe(self) -> dict:
        return {"kind": self.kind, "version": SOURCES_VERSION, "path": str(self.path), "side": self.side,
                "limit": self.limit, "fingerprint": fingerprint([stat_line("colours.txt", self.path / "colours.txt")])}


@pytest.fixture
def colours_kind(monkeypatch):
    """``ColourListSource`` registered for one test (the registry is restored afterwards)."""
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    return register_source(ColourListSource)


@pytest.fixture
def colour_folder(tmp_path) -> Path:
    folder = tmp_path / "colours"
    folder.mkdir()
    (folder / "colours.txt").write_text("red\ngreen\nmauve\nblue\n")
    return folder


def test_a_kind_defined_outside_the_package_is_prepared_by_workbench_prepare(colours_kind, colour_folder, tmp_path,
                                                                              tiny_clip_dir, capsys):  # noqa: F811
    assert source_kinds()[-1] == "colours" and source_class("colours") is ColourListSource
    out = tmp_path / "prepared"
    assert cli_main(["prepare", "--source", f"colours:{colour_folder}", "--out", str(out), "--resolutions", "8",
                     "--text-encoder", str(tiny_clip_dir), "--option", "side=12", "--no-progress"]) == 0
    assert "written 3" in capsys.readouterr().out
    ds = load_prepared(out, format="numpy")
    assert ds["caption"] == ["a red square", "a green square", "a blue square"]
    assert ds["source_key"] == ["000", "001", "003"]
    red = ds[0]["latents_8"]                                      # pixel codec: (3, 8, 8) in [-1, 1]
    assert red.shape == (3, 8, 8) and red[0].mean() > 0.5 > red[2].mean()
    report = load_report(out)
    assert report["source"]["side"] == 12 and report["counts"]["skipped_by_reason"] == {"missing_image": 1}


def load_report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def test_a_registered_kind_is_recognised_listed_and_its_options_checked(colours_kind, colour_folder, capsys):
    assert open_source(colour_folder).kind == "colours"                   # no prefix: recognise() found it
    with pytest.raises(TypeError, match=r"open_source\('colours'\) got unknown options \['n'\]; it accepts \['side'\]"):
        open_source(colour_folder, n=3)
    with pytest.raises(SystemExit):
        cli_main(["prepare", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "a folder with colours.txt" in help_text and "'colours:PATH'" in help_text
    assert "[colours] side: the square's side in pixels" in help_text


def test_an_unknown_kind_fails_listing_the_known_kinds(tmp_path, capsys):
    known = "shapes, imagefolder, webdataset, hf_disk, mds"
    with pytest.raises(ValueError, match=f"unsupported source kind 'parquet'.*supported kinds are {known}"):
        open_source(f"parquet:{tmp_path}")
    with pytest.raises(ValueError, match=f"unknown source kind 'parquet': known kinds are {known}"):
        source_class("parquet")
    assert cli_main(["prepare", "--source", "parquet:/data/x", "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert f"supported kinds are {known}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_registration_refuses_a_kind_that_cannot_work(monkeypatch):
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))

    class NoFingerprint(Source):
        kind, summary = "nofp", "a source without describe()"

        def _iter_records(self, start):
            return iter(())

    with pytest.raises(TypeError, match="does not implement describe.*fingerprint"):
        register_source(NoFingerprint)

    class Taken(ColourListSource):
        kind = "imagefolder"

    with pytest.raises(ValueError, match="'imagefolder' is already registered by ImageFolderSource"):
        register_source(Taken)

    class BadOption(ColourListSource):
        kind, options = "badopt", {"colour": "not a constructor keyword"}

    with pytest.raises(TypeError, match=r"options \['colour'\] are not keywords of its constructor"):
        register_source(BadOption)


def test_every_built_in_kind_declares_itself():
    for kind in source_kinds():
        cls = source_class(kind)
        assert cls.kind == kind and cls.summary and cls.__doc__
        assert all(isinstance(text, str) and text for text in cls.options.values())
    assert source_kinds() == ("shapes", "imagefolder", "webdataset", "hf_disk", "mds")
