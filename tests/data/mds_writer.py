"""A minimal MDS writer for tests (uncompressed 'str' / 'bytes' / 'int' / 'jpeg' / 'png' columns), byte-identical to
mosaicml-streaming's MDSWriter for those columns: tests/data/test_mds.py checks it against the fixture
that MDSWriter itself wrote (tests/fixtures/mds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# jpeg / png: the encoded file's bytes, which is what MDSWriter stores for a PIL image
ENCODE = {"str": lambda v: v.encode("utf-8"), "bytes": lambda v: v, "int": lambda v: np.int64(v).tobytes(),
          "jpeg": lambda v: v, "png": lambda v: v}


def write_mds(out, columns: dict[str, str], rows: list[dict], per_shard: int = 2, size_limit: int = 1 << 26) -> Path:
    """Write ``rows`` into ``out`` (index.json + shard.NNNNN.mds), ``per_shard`` samples per shard.

    A shard is: sample count (uint32), sample offsets (uint32, count + 1), the shard config as JSON,
    then each sample: the byte sizes of its columns (uint32) and their bytes.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = list(columns)
    config = {"column_encodings": [columns[c] for c in names], "column_names": names,
              "column_sizes": [None] * len(names), "compression": None, "format": "mds", "hashes": [],
              "size_limit": size_limit, "version": 2}
    head = json.dumps(config, sort_keys=True).encode()
    shards = []
    for k, start in enumerate(range(0, len(rows), per_shard)):
        samples = []
        for row in rows[start: start + per_shard]:
            data = [ENCODE[columns[c]](row[c]) for c in names]
            samples.append(np.array([len(d) for d in data], np.uint32).tobytes() + b"".join(data))
        n = len(samples)
        offsets = np.cumsum([4 + 4 * (n + 1) + len(head)] + [len(s) for s in samples]).astype(np.uint32)
        blob = np.uint32(n).tobytes() + offsets.tobytes() + head + b"".join(samples)
        basename = f"shard.{k:05d}.mds"
        (out / basename).write_bytes(blob)
        shards.append({**config, "raw_data": {"basename": basename, "bytes": len(blob), "hashes": {}}, "samples": n,
                       "zip_data": None})
    (out / "index.json").write_text(json.dumps({"shards": shards, "version": 2}, sort_keys=True))
    return out
