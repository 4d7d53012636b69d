"""Fixtures that write real sample files, good and deliberately broken, into temporary folders.

``CASES`` is the catalogue shared by the image-folder and WebDataset fixtures: each case is one
sample (key, image extension, image bytes, caption bytes or None) and the skip reason it must get
(None: it must come through as a good RGB image).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

MIN_SIDE = 16                         # the fixtures' sources are opened with this min_side
RED = (220, 30, 30)
BLUE = (30, 60, 220)
CAPTION = b"a test image"


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    """``image`` encoded as ``fmt`` bytes."""
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def noise(size=(32, 24), seed=0) -> Image.Image:
    """An RGB noise image (compresses badly, so truncation always cuts pixel data)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)  # (H, W, 3)
    return Image.fromarray(pixels, "RGB")


def half_transparent(mode: str, colour) -> Image.Image:
    """A 32x24 image in ``mode`` whose left half is fully transparent and right half opaque."""
    rgba = Image.new("RGBA", (32, 24), (*colour, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 16, 24))
    return rgba.convert(mode) if mode != "RGBA" else rgba


def palette(transparent: bool) -> Image.Image:
    """A 32x24 P image: left half index 0 (red), right half index 1 (blue); index 0 maybe transparent."""
    image = Image.new("P", (32, 24), 1)
    image.putpalette([*RED, *BLUE] + [0] * 762)
    image.paste(0, (0, 0, 16, 24))
    if transparent:
        image.info["transparency"] = 0
    return image


def grey16(value: int) -> Image.Image:
    """A 16-bit (I;16) grey image filled with ``value``."""
    return Image.fromarray(np.full((24, 32), value, dtype=np.uint16))  # (H, W) uint16


def _cases() -> list[tuple[str, str, bytes, bytes | None, str | None]]:
    jpeg, png = encode(noise(), "JPEG", quality=90), encode(noise(seed=1), "PNG")
    good = encode(Image.new("RGB", (32, 24), RED), "PNG")
    return [
        ("good_jpeg", "jpg", encode(Image.new("RGB", (40, 30), RED), "JPEG", quality=95), CAPTION, None),
        ("truncated_jpeg", "jpg", jpeg[: len(jpeg) * 6 // 10], CAPTION, "corrupt_image"),
        ("truncated_png", "png", png[: len(png) * 6 // 10], CAPTION, "corrupt_image"),
        ("random_bytes", "jpg", np.random.default_rng(2).bytes(500), CAPTION, "not_an_image"),
        ("text_named_png", "png", b"this is not an image\n", CAPTION, "not_an_image"),
        ("zero_byte", "jpg", b"", CAPTION, "zero_byte"),
        ("cmyk", "jpg", encode(Image.new("CMYK", (32, 24), (0, 255, 255, 0)), "JPEG", quality=95), CAPTION, None),
        ("la", "png", encode(half_transparent("LA", (100, 100, 100)), "PNG"), CAPTION, None),
        ("palette", "png", encode(palette(False), "PNG"), CAPTION, None),
        ("palette_transparent", "png", encode(palette(True), "PNG", transparency=0), CAPTION, None),
        ("rgba", "png", encode(half_transparent("RGBA", RED), "PNG"), CAPTION, None),
        ("grey16", "png", encode(grey16(128 * 257), "PNG"), CAPTION, None),
        ("tiny", "png", encode(Image.new("RGB", (MIN_SIDE - 1, 40), RED), "PNG"), CAPTION, "too_small"),
        ("no_caption", "png", good, None, "missing_caption"),
        ("empty_caption", "png", good, b"  \n\t ", "empty_caption"),
        ("latin1_caption", "png", good, "un caf\u00e9".encode("latin-1"), "caption_not_utf8"),
        ("bom_caption", "png", good, b"\xef\xbb\xbfwith a BOM", None),
    ]


CASES = _cases()
EXPECTED = {key: reason for key, _, _, _, reason in CASES}


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """Write a tar file of ``(name, data)`` members, in order."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def case_members(cases=CASES) -> list[tuple[str, bytes]]:
    """Tar members (``key.ext``, ``key.txt``) of the catalogue cases."""
    members = []
    for key, ext, data, caption, _ in cases:
        members.append((f"{key}.{ext}", data))
        if caption is not None:
            members.append((f"{key}.txt", caption))
    return members


@pytest.fixture
def bad_folder(tmp_path) -> Path:
    """An image folder with .txt sidecars holding every catalogue case, plus a duplicate key.

    ``dup.jpg`` and ``dup.png`` share the key ``dup``: the second one (by name) is a duplicate.
    """
    root = tmp_path / "folder"
    root.mkdir()
    for key, ext, data, caption, _ in CASES:
        (root / f"{key}.{ext}").write_bytes(data)
        if caption is not None:
            (root / f"{key}.txt").write_bytes(caption)
    good = encode(Image.new("RGB", (32, 24), BLUE), "PNG")
    (root / "dup.jpg").write_bytes(encode(Image.new("RGB", (32, 24), BLUE), "JPEG"))
    (root / "dup.png").write_bytes(good)
    (root / "dup.txt").write_bytes(CAPTION)
    (root / "notes.md").write_text("ignored: not an image, not a caption")
    (root / ".hidden.png").write_bytes(b"ignored: hidden")
    return root


@pytest.fixture
def metadata_folder(tmp_path) -> Path:
    """An image folder captioned by ``metadata.jsonl`` files, with broken and duplicate rows."""
    root = tmp_path / "meta"
    (root / "sub").mkdir(parents=True)
    for name in ("a", "b", "c", "d", "e", "f", "g", "sub/h"):
        (root / f"{name}.png").write_bytes(encode(Image.new("RGB", (32, 24), RED), "PNG"))
    (root / "f.txt").write_text("f has a sidecar instead")
    lines = [
        json.dumps({"file_name": "a.png", "text": "first caption of a"}).encode(),
        json.dumps({"file_name": "b.png", "caption": "b uses the caption field"}).encode(),
        json.dumps({"file_name": "a.png", "text": "a again"}).encode(),
        json.dumps({"file_name": "ghost.png", "text": "no such file"}).encode(),
        b"{not json",
        b'{"file_name": "c.png", "text": "caf\xe9 in latin-1"}',
        json.dumps({"file_name": "d.png", "text": "   "}).encode(),
        json.dumps({"file_name": "e.png", "text": None}).encode(),
    ]
    (root / "metadata.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (root / "sub" / "metadata.jsonl").write_text(json.dumps({"file_name": "h.png", "text": "in a subfolder"}) + "\n")
    return root


@pytest.fixture
def shards(tmp_path) -> Path:
    """A folder of two WebDataset shards.

    shard-000: every catalogue case. shard-001: ``good_jpeg`` again (a duplicate key across shards),
    a caption in ``.json``, a broken ``.json``, a sample with no image, and a sample with extra members.
    """
    root = tmp_path / "shards"
    root.mkdir()
    write_tar(root / "shard-000.tar", case_members())
    good = encode(Image.new("RGB", (32, 24), BLUE), "PNG")
    write_tar(root / "shard-001.tar", [
        ("good_jpeg.png", good), ("good_jpeg.txt", b"duplicate key"),
        ("json_caption.webp", encode(Image.new("RGB", (32, 24), BLUE), "WEBP", lossless=True)),
        ("json_caption.json", json.dumps({"caption": "from json", "width": 32}).encode()),
        ("bad_json.png", good), ("bad_json.json", b"{oops"),
        ("no_image.txt", b"caption without image"),
        ("extras.png", good), ("extras.txt", b"with extras"), ("extras.cls", b"3"), ("extras.seg.png", good),
    ])
    return root


@pytest.fixture
def truncated_shards(tmp_path) -> Path:
    """Three shards: a good one, one cut in the middle of its 3rd sample, and garbage named .tar."""
    root = tmp_path / "truncated"
    root.mkdir()
    good = encode(Image.new("RGB", (32, 24), RED), "PNG")
    members = [(f"{name}.{ext}", data) for name in ("s0", "s1", "s2", "s3")
               for ext, data in (("png", encode(noise(seed=7), "PNG")), ("txt", CAPTION))]
    path = write_tar(root / "b.tar", members)
    with tarfile.open(path) as tar:
        cut = tar.getmember("s2.png").offset_data + 100                     # inside s2.png's data
    path.write_bytes(path.read_bytes()[:cut])
    write_tar(root / "a.tar", [("a0.png", good), ("a0.txt", CAPTION)])
    (root / "c.tar").write_bytes(b"this is not a tar file" * 40)
    write_tar(root / "d.tar", [("d0.png", good), ("d0.txt", CAPTION)])
    return root
