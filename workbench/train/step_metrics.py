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


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite losses or gradients."""


FIXED = 4               # loss, grad_norm, finite, repa_loss; then the σ bins' (sum, count) pairs


class PendingMetrics:
    """Steps whose metrics are still tensors on the device; ``read()`` turns them into plain rows."""

    def __init__(self, global_batch: int, mask_ratio: float, repa: bool = False):
        self.global_batch, self.mask_ratio, self.repa = global_batch, mask_ratio, repa
        self._steps: list[tuple[int, float, float]] = []          # (step, lr, host seconds)
        self._values: list[torch.Tensor] = []                     # one (FIXED + 2 * n_bins,) tensor per step
        self._no_repa: torch.Tensor | None = None                 # NaN in the REPA slot, made once per device

    def __len__(self) -> int:
        return len(self._steps)

    def add(self, *, step: int, lr: float, seconds: float, loss: torch.Tensor, grad_norm: torch.Tensor,
            finite: torch.Tensor, sigma_sums: torch.Tensor, repa_loss: torch.Tensor | None = None) -> None:
        """Keep one step's metrics: ``loss``, ``grad_norm``, ``finite`` 0-dim tensors, ``sigma_sums`` (n_bins, 2)."""
        if repa_loss is None and (self._no_repa is None or self._no_repa.device != loss.device):
            self._no_repa = torch.full((), float("nan"), device=loss.device)
        repa = repa_loss if repa_loss is not None else self._no_repa
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


def read_pending_steps(trainer) -> list[dict]:
    """The trainer's pending steps read in one transfer, appended to ``history``, non-finite steps counted.

    ``max_nonfinite`` of them in a row raise ``TrainingDiverged`` (their updates were skipped on the device).
    """
    rows = trainer.pending.read()
    for metrics in rows:
        if metrics.pop("finite"):
            trainer.nonfinite_streak = 0
        else:
            trainer.nonfinite_total += 1
            trainer.nonfinite_streak += 1
        metrics["nonfinite_steps"] = trainer.nonfinite_total
        trainer.history.append(metrics)
        if trainer.nonfinite_streak >= trainer.stage.max_nonfinite:
            raise TrainingDiverged(
                f"{trainer.nonfinite_streak} consecutive steps had a non-finite loss or gradient (last at step "
                f"{metrics['step']}); the last good checkpoint in {trainer.stage.checkpoint_dir} is intact. Lower "
                f"the LR, raise warmup_steps or use grad_clip")
    return rows


def metrics_due(trainer, target: int) -> bool:
    """Whether the trainer reads its pending metrics after this step: a log, eval, checkpoint or sample step, an
    ``on_step`` callback, the run's last step, every ``read_every`` steps, or a stop request (one process only:
    with several, every rank must read at the same steps)."""
    s, stage = trainer.step_count, trainer.stage
    every = (trainer.read_every, stage.log_every, stage.eval_every if trainer.evaluator else 0,
             stage.checkpoint_every, stage.sample_every)
    return (s >= target or s == 1 or any(n and s % n == 0 for n in every) or bool(trainer.callbacks["on_step"])
            or (trainer.accelerator.num_processes == 1 and trainer._stop.is_set()))
