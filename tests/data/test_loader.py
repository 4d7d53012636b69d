"""PreparedLoader: seeded per-epoch order, exact mid-epoch resume, disjoint rank split, fast reads."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from workbench.data.loader import Batch, PreparedLoader, distributed_defaults
from workbench.data.prepare import prepare
from workbench.data.prepared_format import to_arrow

N, C, H, L, D = 50, 3, 4, 6, 5


@pytest.fixture(scope="module")
def dataset():
    """A synthetic prepared dataset of N rows in 3 Arrow chunks; row i is recognisable by its values."""
    import datasets

    rows = np.arange(N, dtype=np.float16)
    lat = np.broadcast_to(rows[:, None, None, None], (N, C, H, H)) + np.float16(0.5)      # (N, C, H, H)
    emb = np.broadcast_to(-rows[:, None, None], (N, L, D)).astype(np.float16)              # (N, L, D)
    mask = np.arange(L)[None, :] < (np.arange(N)[:, None] % L + 1)                         # (N, L)
    chunks = []
    for lo, hi in ((0, 17), (17, 30), (30, N)):                                            # several chunks
        chunks.append(pa.record_batch({
            "latents_4": to_arrow(lat[lo:hi]), "caption_emb": to_arrow(emb[lo:hi]),
            "caption_mask": to_arrow(mask[lo:hi]), "caption": pa.array([f"caption {i}" for i in range(lo, hi)]),
            "source_key": pa.array([f"k{i}" for i in range(lo, hi)])}))
    table = pa.Table.from_batches(chunks)
    assert table.column("latents_4").num_chunks == 3
    return datasets.Dataset(table)


def rows_of(batches) -> list[list[int]]:
    return [b.indices.tolist() for b in batches]


def take(it, k):
    return [next(it) for _ in range(k)]


def test_batches_hold_the_right_rows_with_shapes_and_dtypes(dataset):
    loader = PreparedLoader(dataset, 4, batch_size=8, return_captions=True)
    batch = next(iter(loader))
    assert isinstance(batch, Batch)
    latents, caption_emb, caption_mask = batch                                          # unpacks as 3
    assert latents.shape == (8, C, H, H) and latents.dtype == torch.float32
    assert caption_emb.shape == (8, L, D) and caption_emb.dtype == torch.float32
    assert caption_mask.shape == (8, L) and caption_mask.dtype == torch.bool
    rows = torch.as_tensor(batch.indices, dtype=torch.float32)
    assert torch.equal(latents[:, 0, 0, 0], rows + 0.5) and torch.equal(caption_emb[:, 0, 0], -rows)
    assert caption_mask.sum(1).tolist() == [i % L + 1 for i in batch.indices]
    assert batch.captions == [f"caption {i}" for i in batch.indices]
    assert len(loader) == N // 8


def test_each_epoch_is_a_new_seeded_permutation(dataset):
    loader = PreparedLoader(dataset, 4, batch_size=5, drop_last=False, seed=7)
    e0 = sum(rows_of(loader), [])
    e1 = sum(rows_of(loader), [])
    assert sorted(e0) == sorted(e1) == list(range(N))                                   # every row once per epoch
    assert e0 != e1                                                                     # a new order each epoch
    assert loader.epoch == 1
    again = PreparedLoader(dataset, 4, batch_size=5, drop_last=False, seed=7)
    assert sum(rows_of(again), []) == e0                                                 # deterministic per seed
    other = PreparedLoader(dataset, 4, batch_size=5, drop_last=False, seed=8)
    assert sum(rows_of(other), []) != e0
    plain = PreparedLoader(dataset, 4, batch_size=5, drop_last=False, shuffle=False)
    assert sum(rows_of(plain), []) == list(range(N))


@pytest.mark.parametrize("consumed", [3, 6, 7, 15])     # mid-epoch, at an epoch boundary, just after, later
def test_resume_from_state_dict_reproduces_the_uninterrupted_batches(dataset, consumed):
    full = PreparedLoader(dataset, 4, batch_size=8, seed=1)                              # 6 batches per epoch
    expected = take(full.batches(), 20)
    first = PreparedLoader(dataset, 4, batch_size=8, seed=1)
    it = first.batches()
    take(it, consumed)
    state = json.loads(json.dumps(first.state_dict()))                                  # JSON round trip
    resumed = PreparedLoader(dataset, 4, batch_size=8, seed=1)
    resumed.load_state_dict(state)
    rest = take(resumed.batches(), 20 - consumed)
    assert rows_of(rest) == rows_of(expected[consumed:])
    for got, want in zip(rest, expected[consumed:]):
        for a, b in zip(got, want):
            assert torch.equal(a, b)


def test_load_state_dict_refuses_a_state_from_another_setup(dataset):
    state = PreparedLoader(dataset, 4, batch_size=8, seed=1).state_dict()
    with pytest.raises(ValueError, match=r"seed 1 \(loader has 2\)"):
        PreparedLoader(dataset, 4, batch_size=8, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match=r"batch_size 8 \(loader has 4\)"):
        PreparedLoader(dataset, 4, batch_size=4, seed=1).load_state_dict(state)


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_see_disjoint_samples_that_cover_the_epoch(dataset, world_size):
    loaders = [PreparedLoader(dataset, 4, batch_size=4, drop_last=False, seed=3, rank=r, world_size=world_size)
               for r in range(world_size)]
    for _ in range(2):                                                                   # two epochs
        per_rank = [sum(rows_of(loader), []) for loader in loaders]
        seen = sum(per_rank, [])
        assert len(seen) == len(set(seen)) == N                                          # disjoint and complete
    dropping = [PreparedLoader(dataset, 4, batch_size=4, seed=3, rank=r, world_size=world_size)
                for r in range(world_size)]
    counts = {len(list(loader)) for loader in dropping}
    assert counts == {(N // world_size) // 4}                                            # equal steps for DDP
    sets = [set(sum(rows_of(loader), [])) for loader in dropping]
    assert all(not (a & b) for i, a in enumerate(sets) for b in sets[i + 1:])


def test_rank_and_world_size_default_from_the_environment(dataset, monkeypatch):
    from accelerate.state import PartialState

    monkeypatch.setattr(PartialState, "_shared_state", {})   # no accelerate state left by an earlier test
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed_defaults() == (1, 2)
    loader = PreparedLoader(dataset, 4, batch_size=4)
    assert (loader.rank, loader.world_size) == (1, 2)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert distributed_defaults() == (0, 1)


def test_bad_arguments_fail_clearly(dataset, tmp_path):
    with pytest.raises(ValueError, match="no latents_8 column; prepared resolutions: 4"):
        PreparedLoader(dataset, 8, batch_size=4)
    with pytest.raises(ValueError, match="not enough for one batch"):
        PreparedLoader(dataset, 4, batch_size=N + 1)
    with pytest.raises(ValueError, match="rank must be in"):
        PreparedLoader(dataset, 4, batch_size=4, rank=2, world_size=2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PreparedLoader(tmp_path / "missing", 4, batch_size=4)


def test_loader_reads_a_prepared_folder(tmp_path, tiny_clip_dir):  # noqa: F811
    out = tmp_path / "prep"
    prepare("shapes", out, text_encoder=str(tiny_clip_dir), resolutions=(8, 16), limit=12, n=12, shard_size=5,
            progress=False)
    loader = PreparedLoader(out, 16, batch_size=4, return_captions=True, shuffle=False)
    batches = list(loader)
    assert len(batches) == 3 and batches[0].latents.shape == (4, 3, 16, 16)
    assert batches[0].caption_emb.shape == (4, 77, 32) and batches[0].caption_mask[:, 0].all()
    import datasets

    ds = datasets.load_from_disk(str(out)).with_format("torch")
    assert torch.equal(batches[1].latents, ds[4:8]["latents_16"])
    assert torch.equal(batches[1].caption_emb, ds[4:8]["caption_emb"])
    assert batches[1].captions == ds[4:8]["caption"]
    with pytest.raises(ValueError, match="resolution 32 was not prepared .* it has 8, 16"):
        PreparedLoader(out, 32, batch_size=4)
