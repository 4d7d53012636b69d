"""A training step's metrics kept on the device until they are needed, then read for many steps at once.

Reading a number back from a GPU (``.item()``, ``float(t)``) waits for every queued kernel, so a step
that reads its loss, gradient norm and per-σ losses stalls the host several times and the GPU idles
while Python prepares the next step. The Trainer instead adds each step's tensors here and reads them
in one transfer when something needs them: a log line, a callback, a checkpoint, the end of a run
(docs/benchmarks.md, "The Trainer step")::

    pending = PendingMetrics(global_batch=32, mask_ratio=0.75)
    pending.add(step=1, lr=1e-3, seconds=0.2, loss=loss, grad_norm=norm, finite=ok, sigma_sums=sums)
    rows = pending.read()        # [{"step": 1, "loss": ..., "grad_norm": ..., "finite": True, ...}]
"""

from __future__ import annotations

import time

import torch

from ..diffusion import sigma_bin_means

FIXED = 4               # loss, grad_norm, finite, repa_loss; then the σ bins' (sum, count) pairs


class PendingMetrics:
    """Steps whose metrics are still tensors on the device; ``read()`` turns them into plain rows."""

    def __init__(self, global_batch: int, mask_ratio: float, repa: bool = False):
        self.global_batch, self.mask_ratio, self.repa = global_batch, mask_ratio, repa
        self._steps: list[tuple[int, float, float]] = []          # (step, lr, host seconds)
        self._values: list[torch.Tensor] = []                     # one (FIXED + 2 * n_bins,) tensor per step

    def __len__(self) -> int:
        return len(self._steps)

    def add(self, *, step: int, lr: float, seconds: float, loss: torch.Tensor, grad_norm: torch.Tensor,
            finite: torch.Tensor, sigma_sums: torch.Tensor, repa_loss: torch.Tensor | None = None) -> None:
        """Keep one step's metrics: ``loss``, ``grad_norm``, ``finite`` 0-dim tensors, ``sigma_sums`` (n_bins, 2)."""
        repa = repa_loss if repa_loss is not None else torch.full((), float("nan"), device=loss.device)
        scalars = torch.stack([t.detach().float().reshape(()) for t in (loss, grad_norm, finite, repa)])  # (4,)
        self._values.append(torch.cat([scalars, sigma_sums.detach().float().flatten()]))    # (4 + 2 n_bins,)
        self._steps.append((step, lr, seconds))

    def read(self) -> list[dict]:
        """Every pending step as ``{"step", "loss", "lr", "grad_norm", "img_per_s", "mask_ratio", "finite",
        "loss_per_sigma"[, "repa_loss"]}``, read from the device in one transfer; nothing stays pending.

        ``img_per_s`` is the rate over the steps read together, including the wait for the device.
        """
        if not self._steps:
            return []
        start = time.perf_counter()
        values = torch.stack(self._values).tolist()                  # the one read back from the device
        host_seconds = sum(seconds for _, _, seconds in self._steps) + time.perf_counter() - start
        img_per_s = self.global_batch * len(self._steps) / max(host_seconds, 1e-9)
        rows = []
        for (step, lr, _), row in zip(self._steps, values):
            loss, grad_norm, finite, repa = row[:FIXED]
            sums = [row[i:i + 2] for i in range(FIXED, len(row), 2)]
            metrics = {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "img_per_s": img_per_s,
                       "mask_ratio": self.mask_ratio, "finite": finite == 1.0, "loss_per_sigma": sigma_bin_means(sums)}
            if self.repa:
                metrics["repa_loss"] = repa
            rows.append(metrics)
        self._steps, self._values = [], []
        return rows
