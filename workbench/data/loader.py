"""Deterministic, resumable, distributed-aware batches from a prepared dataset.

``PreparedLoader`` serves ``Batch(latents, caption_emb, caption_mask)`` at one resolution from a
folder written by ``workbench.data.prepare`` (or any ``datasets.Dataset`` with the same columns)::

    loader = PreparedLoader("data/prepared/shapes32", resolution=32, batch_size=32, seed=0)
    for latents, caption_emb, caption_mask in loader:      # one epoch
        ...                                                 # (32, 3, 32, 32), (32, 77, 384), (32, 77)
    for batch in loader.batches():                          # endless, epoch after epoch
        ...
    state = loader.state_dict()                             # {"epoch": 1, "position": 17, ...}
    loader.load_state_dict(state)                           # continue exactly from there

How it is fast. The Arrow files are memory-mapped and each needed column is viewed as a numpy
array ``(N, *shape)`` straight over the Arrow buffers (no copy, no per-row Python). A batch is
one fancy-index per Arrow chunk, then ``torch.from_numpy``; fp16 is widened to float32 on the
target device, so a GPU receives half the bytes.

Order. Epoch ``e`` uses the permutation ``numpy.random.default_rng([seed, e]).permutation(N)``
(identity without ``shuffle``). Rank ``r`` of ``W`` takes ``perm[r::W]``: ranks are disjoint and
together cover the epoch. With ``drop_last`` every rank gets the same number of full batches,
``(N // W) // batch_size``, which DDP needs; without it, the last batch may be short and ranks may
differ by one batch. Batches are served in permutation order; each batch's rows are sorted
(better locality; the set of rows is what the permutation says).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import torch

from ..devices import to_device
from .caption_padding import trim_caption_padding
from .prepared_format import PreparedInfo, load_prepared
from ..errors import InputError


class _BatchTuple(NamedTuple):
    latents: torch.Tensor        # (B, C, h, w) float32
    caption_emb: torch.Tensor    # (B, L, D) float32
    caption_mask: torch.Tensor   # (B, L) bool, True at real tokens


class Batch(_BatchTuple):
    """One batch: ``latents`` (B, C, h, w) float32, ``caption_emb`` (B, L, D) float32,
    ``caption_mask`` (B, L) bool.

    It unpacks as a 3-tuple: ``latents, caption_emb, caption_mask = batch``. Extra attributes:
    ``indices`` (B,) int64 row numbers in the dataset, and ``captions`` (list of str) when the
    loader was built with ``return_captions=True`` (else None).
    """

    def __new__(cls, latents, caption_emb, caption_mask, indices=None, captions=None):
        self = super().__new__(cls, latents, caption_emb, caption_mask)
        self.indices = indices
        self.captions = captions
        return self

    def to(self, device: str | torch.device) -> Batch:
        """The same batch with its tensors on ``device``."""
        return Batch(*(t.to(device) for t in self), indices=self.indices, captions=self.captions)


def distributed_defaults() -> tuple[int, int]:
    """``(rank, world_size)`` of this process, without initialising anything.

    In order: an initialised ``torch.distributed`` process group; an ``accelerate`` state that
    already exists; the ``RANK`` / ``WORLD_SIZE`` environment variables (torchrun, accelerate
    launch); else ``(0, 1)``.
    """
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    try:
        from accelerate.state import PartialState

        if PartialState._shared_state:                       # created by Accelerator() / PartialState()
            state = PartialState()
            return int(state.process_index), int(state.num_processes)
    except Exception:  # noqa: BLE001 - accelerate missing or in an odd state: fall through
        pass
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class _Column:
    """A fixed-shape Arrow column as per-chunk numpy views ``(n_chunk, *shape)``, indexable by rows."""

    def __init__(self, chunked, shape: tuple[int, ...]):
        from .prepared_format import from_arrow

        chunks = [c for c in chunked.chunks if len(c)]
        self.shape = shape
        self.chunks = [from_arrow(c, shape) for c in chunks]       # zero-copy except for bools
        self.starts = np.cumsum([0] + [len(c) for c in chunks])[:-1]
        self.dtype = self.chunks[0].dtype if self.chunks else np.float16

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (sorted or not) as a new array ``(len(rows), *shape)``."""
        if len(self.chunks) == 1:
            return self.chunks[0][rows]
        which = np.searchsorted(self.starts, rows, side="right") - 1
        out = np.empty((len(rows), *self.shape), dtype=self.dtype)
        for c in np.unique(which):
            sel = which == c
            out[sel] = self.chunks[c][rows[sel] - self.starts[c]]
        return out


class PreparedLoader:
    """Seeded, resumable, rank-aware batches ``(latents, caption_emb, caption_mask)`` at one resolution.

    Args:
        data: a prepared folder (``workbench prepare --out``) or a ``datasets.Dataset`` with the
            columns ``latents_<resolution>``, ``caption_emb``, ``caption_mask`` (and ``caption``).
        resolution: which ``latents_<resolution>`` column to serve.
        batch_size: rows per batch on this rank.
        seed: shuffling seed; epoch ``e`` uses ``default_rng([seed, e]).permutation(N)``.
        shuffle: False serves rows in dataset order (still split across ranks).
        drop_last: serve only full batches, the same number on every rank (use it for DDP).
        device: where the tensors go (latents and embeddings float32, mask bool).
        rank, world_size: this process's share; None takes them from ``distributed_defaults()``.
        return_captions: also attach the caption strings to each batch (``batch.captions``).
        trim_captions: drop the caption positions no row of a batch uses (``trim_caption_padding``),
            on the host before the transfer; for models that mask padding (not ``caption_mask_compat``).

    Iteration: ``iter(loader)`` yields the rest of the current epoch (all of it when fresh), then
    the next ``iter`` starts the next epoch; ``loader.batches()`` chains epochs endlessly.
    ``state_dict()`` after receiving a batch says that batch was consumed; a loader given that
    state with ``load_state_dict`` continues with the very next batch. Use one iterator at a time.

    Example::

        loader = PreparedLoader("data/prepared/shapes32", 32, batch_size=32, device="cuda")
        it = loader.batches()
        latents, caption_emb, caption_mask = next(it)      # (32, 3, 32, 32), (32, 77, 384), (32, 77)
        ckpt = loader.state_dict()                          # JSON-able
        again = PreparedLoader("data/prepared/shapes32", 32, batch_size=32)
        again.load_state_dict(ckpt)                         # next(again.batches()) == next(it)
    """

    def __init__(
        self,
        data: Any,                              # prepared folder path or a datasets.Dataset
        resolution: int,                        # serves latents_<resolution>
        batch_size: int,                        # rows per batch on this rank
        *,
        seed: int = 0,                          # shuffling seed
        shuffle: bool = True,                   # a new seeded permutation every epoch
        drop_last: bool = True,                 # only full batches, equal count on every rank
        device: str | torch.device = "cpu",     # where the batch tensors go
        rank: int | None = None,                # None: distributed_defaults()
        world_size: int | None = None,          # None: distributed_defaults()
        return_captions: bool = False,          # attach caption strings as batch.captions
        trim_captions: bool = False,            # drop padding no row uses (trim_caption_padding), on the host
    ):
        import datasets

        if isinstance(data, (str, os.PathLike)):
            info = PreparedInfo.read(data)
            column = info.column(resolution)
            ds, self.source = load_prepared(info.path, format=None), info.path
        elif isinstance(data, datasets.Dataset):
            ds, column, self.source = data, f"latents_{int(resolution)}", "<Dataset>"
            if column not in ds.column_names:
                have = sorted(c[len("latents_"):] for c in ds.column_names if c.startswith("latents_"))
                raise InputError(f"the dataset has no {column} column; prepared resolutions: "
                                 f"{', '.join(have) or 'none'}")
        else:
            raise TypeError(f"data must be a prepared folder path or a datasets.Dataset, got {type(data).__name__}")
        for needed in ("caption_emb", "caption_mask"):
            if needed not in ds.column_names:
                raise InputError(f"the dataset has no {needed!r} column: is it a workbench prepared dataset?")
        if ds._indices is not None:                             # select/shuffle/filter views: materialise
            ds = ds.flatten_indices()
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        default_rank, default_world = distributed_defaults()
        self.rank = default_rank if rank is None else int(rank)
        self.world_size = default_world if world_size is None else int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise InputError(f"rank must be in [0, world_size), got rank {self.rank}, world_size {self.world_size}")

        features = ds.features
        table = ds.data.table
        self.resolution, self.column = int(resolution), column
        self.latent_shape = _feature_shape(features[column])                        # (C, h, w)
        emb_shape = _feature_shape(features["caption_emb"])                         # (L, D)
        self._latents = _Column(table.column(column), self.latent_shape)
        self._emb = _Column(table.column("caption_emb"), emb_shape)
        mask = _Column(table.column("caption_mask"), emb_shape[:1])
        self._mask = np.concatenate(mask.chunks) if mask.chunks else np.zeros((0, emb_shape[0]), bool)  # (N, L)
        self._dataset = ds
        self._captions = ds.data.table.column("caption").to_pylist() if return_captions else None
        self.num_rows = len(ds)
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.device = torch.device(device)
        self.trim_captions = trim_captions
        self.epoch, self.position = 0, 0
        if len(self) == 0:
            raise InputError(f"{self.source} has {self.num_rows} rows: not enough for one batch of {self.batch_size} "
                             f"on each of {self.world_size} ranks; lower batch_size or prepare more data")

    # -- order -----------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        if self.drop_last:
            return (self.num_rows // self.world_size) // self.batch_size
        mine = len(range(self.rank, self.num_rows, self.world_size))
        return -(-mine // self.batch_size)

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """Row numbers this rank serves in ``epoch``, in serving order (int64)."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, int(epoch)]).permutation(self.num_rows)  # (N,)
        else:
            order = np.arange(self.num_rows)                                                      # (N,)
        mine = order[self.rank::self.world_size]
        if self.drop_last:
            mine = mine[: len(self) * self.batch_size]
        return mine.astype(np.int64)

    # -- batches ---------------------------------------------------------------------------------

    def fetch(self, rows: np.ndarray) -> Batch:
        """The batch of dataset rows ``rows`` (int array), tensors on ``self.device``."""
        rows = np.asarray(rows, dtype=np.int64)
        lat = torch.from_numpy(self._latents.take(rows))          # (B, C, h, w) fp16
        emb = torch.from_numpy(self._emb.take(rows))              # (B, L, D) fp16
        mask = torch.from_numpy(self._mask[rows])                 # (B, L) bool
        if self.trim_captions:
            emb, mask = trim_caption_padding(emb, mask)           # (B, l, D), (B, l): host work, no device read
        lat, emb, mask = to_device((lat, emb, mask), self.device)   # pinned and non-blocking on CUDA
        captions = [self._captions[i] for i in rows] if self._captions is not None else None
        return Batch(lat.float(), emb.float(), mask, indices=rows, captions=captions)  # float32 on device

    def __iter__(self) -> Iterator[Batch]:
        """The remaining batches of the current epoch (a finished epoch rolls over to the next)."""
        if self.position >= len(self):
            self.epoch, self.position = self.epoch + 1, 0
        order = self.epoch_indices(self.epoch)
        while self.position < len(self):
            p = self.position
            rows = np.sort(order[p * self.batch_size:(p + 1) * self.batch_size])
            self.position = p + 1                                  # consumed once handed out
            yield self.fetch(rows)

    def batches(self) -> Iterator[Batch]:
        """Endless batches, epoch after epoch (each epoch a new seeded permutation)."""
        while True:
            yield from self

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch (like ``DistributedSampler.set_epoch``)."""
        self.epoch, self.position = int(epoch), 0

    # -- resume ----------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """JSON-able position: ``epoch``, ``position`` (batches consumed in it) and the settings."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "num_rows": self.num_rows,
                "batch_size": self.batch_size, "world_size": self.world_size, "rank": self.rank,
                "shuffle": self.shuffle, "drop_last": self.drop_last}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state``; raise ``ValueError`` when it was made with an incompatible loader.

        The rank is not checked, so one rank's state may restore every rank (they move in lockstep).
        """
        mine = self.state_dict()
        diffs = [f"{k} {state[k]!r} (loader has {mine[k]!r})" for k in
                 ("seed", "num_rows", "batch_size", "world_size", "shuffle", "drop_last")
                 if k in state and state[k] != mine[k]]
        if diffs:
            raise InputError(f"loader state does not fit this loader: {', '.join(diffs)}; build the loader with the "
                             "same dataset and settings to resume exactly")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= len(self):
            raise InputError(f"loader state has epoch {epoch}, position {position}: expected epoch >= 0 and "
                             f"0 <= position <= {len(self)}")
        self.epoch, self.position = epoch, position

    def __repr__(self) -> str:
        return (f"PreparedLoader({self.source!r}, resolution={self.resolution}, batch_size={self.batch_size}, "
                f"rows={self.num_rows}, rank={self.rank}/{self.world_size}, epoch={self.epoch}, "
                f"position={self.position}/{len(self)})")


def _feature_shape(feature) -> tuple[int, ...]:
    """Shape of a fixed-size nested-list (or ArrayND) feature: ``List(List(Value, 8), 4)`` -> ``(4, 8)``."""
    shape = getattr(feature, "shape", None)                      # Array2D / Array3D
    if shape is not None:
        return tuple(int(s) for s in shape)
    dims = []
    while hasattr(feature, "length") and hasattr(feature, "feature"):
        if feature.length is None or feature.length < 0:
            raise InputError(f"column feature {feature} has variable length; expected fixed-size lists as "
                             "written by workbench prepare")
        dims.append(int(feature.length))
        feature = feature.feature
    if not dims:
        raise InputError(f"column feature {feature} is not a fixed-size array")
    return tuple(dims)
