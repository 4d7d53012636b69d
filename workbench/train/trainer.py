"""The Trainer: one stage of MicroDiT training on accelerate, usable from a notebook, papermill or a shell.

    stage = Stage.from_yaml("configs/demo/stage1.yaml")
    trainer = Trainer(stage)          # validates everything before training; resumes automatically
    trainer.run()                     # or trainer.run_in_background(); trainer.stop()
    trainer.history[-1]               # {"step": ..., "loss": ..., "lr": ..., "img_per_s": ...}

Every sample's noise level, noise, patch mask and caption dropout are drawn from a generator
seeded by (seed, step, dataset row), so results do not depend on how the global batch is split
over processes and micro-batches, and a resumed run repeats the uninterrupted one exactly.
"""

from __future__ import annotations

import copy
import math
import threading
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data.loader import PreparedLoader
from ..diffusion import EDMLoss, loss_per_sigma_bin
from ..errors import InputError, out_of_memory, writing
from ..model import MicroDiT, null_caption, trim_caption_padding
from . import checkpoint as ckpt
from .accelerator import make_accelerator
from .inference import sampling_record
from .interrupt import StopOnInterrupt
from .lock import StageLock
from .monitor import MetricsLog, PromptGrid
from .noise import draw_sample_noise
from .optim import clip_grad_norm, make_optimizer
from .resume import check_resume, resumable_checkpoint, resumed_lines, start_from
from .stage_folder import clear_outputs, samples_path, stopped_line
from .stages import Stage, check_stage, ema_decay_at, lr_factor


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite losses or gradients."""


class Trainer:
    """Trains one :class:`Stage`; resumable, stoppable from another thread, with callbacks.

    Args:
        stage: the stage config.
        resume: ``"auto"`` continues from the newest valid checkpoint of this stage (if any),
            ``"never"`` refuses to run over existing checkpoints, a path resumes from it.
            Resuming prints one line that says so.
        fresh: delete the stage folder's earlier run first and start over (exploring notebooks use it).
        accelerator: an ``accelerate.Accelerator`` (built from the stage when None).
        progress: show a tqdm bar (loss and img/s).
        on_step / on_checkpoint / on_samples: callbacks ``f(trainer, metrics)``, ``f(trainer, path)``,
            ``f(trainer, path)``; ``trainer.callbacks["on_end"]`` holds ``f(trainer, history)`` run as ``run()`` ends.
        evaluator: ``f(trainer) -> {name: number}``, run every ``stage.eval_every`` steps on the sampling
            model; its numbers go into that step's metrics under ``"eval"`` (the dashboard plots them).
            ``workbench.eval.compositional.trainer_evaluator()`` scores the shapes prompts.

    Ctrl-C (or Kernel › Interrupt) during ``run()`` ends the step, writes a checkpoint, prints one
    line and returns; ``stop()`` (the dashboard's Stop) does the same from another thread.

    Example::

        trainer = Trainer(Stage.from_yaml("configs/demo/stage1.yaml", steps=50))
        trainer.run()
        import pandas as pd; pd.DataFrame(trainer.history).plot(x="step", y="loss")
    """

    def __init__(self, stage: Stage, *, resume: str | Path | None = "auto", fresh: bool = False, accelerator=None,
                 progress: bool = True, on_step: Callable | None = None, on_checkpoint: Callable | None = None,
                 on_samples: Callable | None = None, evaluator: Callable | None = None):
        from accelerate.utils import set_seed

        self.stage = stage
        self.accelerator = acc = accelerator if accelerator is not None else make_accelerator(stage)
        self.info = check_stage(stage, acc.num_processes)
        self.accumulation = stage.global_batch // (stage.micro_batch * acc.num_processes)
        self.callbacks = {"on_step": [f for f in [on_step] if f], "on_checkpoint": [f for f in [on_checkpoint] if f],
                          "on_samples": [f for f in [on_samples] if f], "on_end": []}
        self.progress = progress
        self.evaluator = evaluator
        if stage.eval_every and evaluator is None:
            warnings.warn(f"Stage.eval_every={stage.eval_every} but no evaluator was given, so nothing is scored "
                          f"during training; pass evaluator=workbench.eval.compositional.trainer_evaluator()",
                          stacklevel=2)
        self.history: list[dict] = []
        self.step_count = 0
        self.nonfinite_total = 0
        self.nonfinite_streak = 0
        self._stop = threading.Event()
        self._checkpointed_step = self._sampled_step = -1
        self._thread: threading.Thread | None = None
        self._active = False
        self.interrupted, self.stop_signal = False, ""      # stop_signal: "SIGINT" / "SIGTERM" / "stop" (stop())
        self.error: BaseException | None = None
        set_seed(stage.seed)
        self._lock = None

        self.edm = stage.edm
        self.loss_fn = EDMLoss(self.edm)
        self._build_model_and_optimizer()
        self.grid = PromptGrid(self.info, stage.sample_prompts, stage.sample_steps, stage.sample_cfg_scale,
                               seed=stage.seed, edm=self.edm, resolution=stage.resolution)
        if acc.is_main_process:                 # validated: from here on this Trainer writes the stage folder
            self._lock = StageLock.acquire(stage.stage_dir, owner=self)        # one writer, for the Trainer's life
        try:
            self._open_stage_folder(resume, fresh)
        except BaseException:
            self.close()
            raise

    def _build_model_and_optimizer(self) -> None:
        """The model (+EMA, +REPA), AdamW and its schedule, the loader; ``init_from``; accelerate's wrappers."""
        stage, acc = self.stage, self.accelerator
        model = MicroDiT.from_preset(stage.model, **stage.model_overrides)
        self.ema = copy.deepcopy(model).requires_grad_(False).eval() if stage.ema_decay > 0 else None
        self.repa = None
        if stage.repa_weight > 0:
            from .repa import build_repa

            self.repa = build_repa(stage.repa_encoder, self.info, model, stage.repa_depth)
            self.repa.attach(model)
        if stage.activation_checkpointing:
            model.enable_gradient_checkpointing()
        if stage.compile:
            model.compile_blocks()                  # in place: the EMA copy above and the checkpoints stay plain
        optimizer = make_optimizer(model, stage, acc.device, self.repa)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, stage))
        self.loader = PreparedLoader(stage.data, stage.resolution, stage.micro_batch, seed=stage.seed,
                                     device=acc.device, rank=acc.process_index, world_size=acc.num_processes)
        self.init_info = start_from(stage, model, self.ema, optimizer) if stage.init_from else None
        if self.repa is not None:
            self.repa.to(acc.device)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        if self.ema is not None:
            self.ema.to(acc.device)

    def _open_stage_folder(self, resume, fresh: bool) -> None:
        """Temp folders of dead writers removed, ``fresh``'s deletions, the metrics log, resume, stage.yaml."""
        stage, acc = self.stage, self.accelerator
        if acc.is_main_process:
            ckpt.remove_stale_temps(stage.checkpoint_dir)                   # half-written by dead writers
            removed = clear_outputs(stage) if fresh else []     # only what the workbench wrote there
            if removed:
                print(f"{stage.run}/{stage.name}: starting over (fresh=True removed {', '.join(removed)} "
                      f"in {stage.stage_dir})", flush=True)
        acc.wait_for_everyone()
        self.metrics = MetricsLog(stage.stage_dir / "metrics.jsonl")
        self.resumed_from = self._resume(resume)
        if acc.is_main_process and not self.past_steps:     # a stage past its steps records nothing new
            with writing("stage.yaml", stage.stage_dir):
                stage.to_yaml(stage.stage_dir / "stage.yaml")
        if stage.tensorboard:
            acc.init_trackers(stage.run, config={k: v for k, v in stage.to_dict().items()
                                                 if isinstance(v, (int, float, str, bool))})

    # ------------------------------------------------------------------ set-up
    def _resume(self, resume) -> str | None:
        root = self.stage.checkpoint_dir
        if resume in (None, "never"):
            if ckpt.list_checkpoints(root):
                raise InputError(f"{root} already has checkpoints; resume with resume='auto' (--resume auto) or "
                                 f"choose another run/stage name")
            return None
        applied = {}

        def load(path):
            applied[path] = check_resume(path, self.stage, self.info.fingerprint)   # refuses what cannot apply
            return ckpt.load_checkpoint(path, model=self.raw_model, optimizer=self.optimizer, scheduler=self.scheduler,
                                        ema=self.ema, map_location=self.accelerator.device, verify=resume != "auto")

        if resume == "auto":                     # the newest usable one; all unusable: an error, not step 0
            path, state = resumable_checkpoint(root, load)
        else:
            path = ckpt.resolve_checkpoint(resume)
            state = load(path)
        if path is None:
            if self.accelerator.is_main_process:   # a fresh start: drop an earlier run's metrics (never checkpointed)
                if self.metrics.read():
                    print(f"{self.stage.run}/{self.stage.name}: starting at step 0 (the earlier run in "
                          f"{self.stage.stage_dir} left no valid checkpoint)", flush=True)
                self.metrics.truncate_after(0)
            return None
        ckpt.restore_rng(state.rng)
        self.step_count = self._checkpointed_step = state.step
        self.loader.load_state_dict(state.loader)
        self.nonfinite_total = state.extra.get("nonfinite_total", 0)
        if self.repa is not None and state.extra.get("repa"):
            self.repa.projector.load_state_dict(state.extra["repa"])
        if self.accelerator.scaler is not None and state.extra.get("grad_scaler"):
            self.accelerator.scaler.load_state_dict(state.extra["grad_scaler"])   # fp16: the loss scale
        self.history = [r for r in self.metrics.read() if r.get("step", 0) <= state.step]
        if self.accelerator.is_main_process:
            self.metrics.truncate_after(state.step)
            print(resumed_lines(self.stage, path, state.step, applied[path]), flush=True)
        return str(path)

    # ------------------------------------------------------------------ training
    @property
    def done(self) -> bool:
        """True once the stage has run all its steps."""
        return self.step_count >= self.stage.steps

    @property
    def past_steps(self) -> bool:
        """True when the resumed checkpoint is beyond ``stage.steps`` (the stage was shortened): nothing to do."""
        return self.step_count > self.stage.steps

    def step(self) -> dict:
        """One optimiser step over ``global_batch`` samples; returns its metrics."""
        acc, stage = self.accelerator, self.stage
        start = time.perf_counter()
        batches = self._batches()
        self.model.train()
        outs = [self._forward_backward(batch, len(batches), last=i == len(batches) - 1)
                for i, batch in enumerate(batches)]
        grad_norm = float(self._clip_gradients())
        losses = acc.gather(torch.cat([per_sample for per_sample, _, _ in outs]))         # (global_batch,)
        all_sigmas = acc.gather(torch.cat([sigma for _, sigma, _ in outs]))               # (global_batch,)
        loss = losses.float().mean().item()
        lr = self._update(finite=math.isfinite(grad_norm) and math.isfinite(loss))
        elapsed = time.perf_counter() - start
        metrics = {"step": self.step_count, "loss": loss, "lr": lr,
                   "grad_norm": grad_norm, "img_per_s": stage.global_batch / elapsed, "mask_ratio": stage.mask_ratio,
                   "nonfinite_steps": self.nonfinite_total,
                   "loss_per_sigma": loss_per_sigma_bin(losses, all_sigmas)}
        if self.repa is not None:
            metrics["repa_loss"] = acc.gather(torch.cat([repa for _, _, repa in outs])).float().mean().item()
        self.history.append(metrics)
        return metrics

    def _forward_backward(self, batch, micro_batches: int, *, last: bool) -> tuple:
        """One micro-batch: its noise, the caption (dropped for CFG), the loss and its gradient.

        Returns the detached per-sample losses and σ, and the per-sample REPA loss (None without REPA). Gradients
        are only all-reduced on the ``last`` micro-batch of a step.
        """
        acc, stage, model = self.accelerator, self.stage, self.model
        c, h, w = batch.latents.shape[1:]
        tokens = (h // self._patch) * (w // self._patch)
        sigma, noise, mask_noise, drop = draw_sample_noise(batch.indices, self.step_count, stage, self.edm, (c, h, w),
                                                           tokens)
        caption, caption_mask = batch.caption_emb, batch.caption_mask
        if not self.raw_model.arch.caption_mask_compat:     # same loss, less work: see trim_caption_padding
            caption, caption_mask = trim_caption_padding(caption, caption_mask)
        if drop.any():
            null, null_mask = null_caption(caption, caption_mask)
            d = drop.to(caption.device)
            caption = torch.where(d[:, None, None], null, caption)                 # (B, L, D)
            caption_mask = torch.where(d[:, None], null_mask, caption_mask)       # (B, L)
        sync = acc.no_sync(model) if not last and acc.num_processes > 1 else nullcontext()
        repa = None
        with sync, acc.autocast():
            out = self.loss_fn(model, batch.latents, caption, caption_mask, stage.mask_ratio,
                               sigma=sigma.to(acc.device), noise=noise.to(acc.device),
                               mask_noise=mask_noise.to(acc.device))
            total = out.loss
            if self.repa is not None:
                repa = self.repa.per_sample_loss(batch.latents, stage.mask_ratio, mask_noise.to(acc.device))
                total = total + stage.repa_weight * repa.mean()
            acc.backward(total / micro_batches)
        return out.per_sample.detach(), out.sigma.detach(), None if repa is None else repa.detach()

    def _update(self, *, finite: bool) -> float:
        """The optimiser, schedule and EMA updates after the backward passes; returns the LR this step used.

        A non-finite step updates nothing (fp16 aside: its GradScaler skips the update itself and lowers
        its scale); ``max_nonfinite`` of them in a row raise ``TrainingDiverged``.
        """
        stage = self.stage
        if finite or self.accelerator.scaler is not None:
            self.optimizer.step()
        if finite:
            self.nonfinite_streak = 0
        else:
            self.nonfinite_total += 1
            self.nonfinite_streak += 1
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.step_count += 1
        if finite:
            self._update_ema()
        if self.nonfinite_streak >= stage.max_nonfinite:
            raise TrainingDiverged(
                f"{self.nonfinite_streak} consecutive steps had a non-finite loss or gradient (last at step "
                f"{self.step_count}); the last good checkpoint in {stage.checkpoint_dir} is intact. Lower the LR, "
                f"raise warmup_steps or use grad_clip")
        return lr

    @property
    def raw_model(self) -> MicroDiT:
        """The trained MicroDiT itself, under any DDP / FSDP and ``torch.compile`` wrappers."""
        return ckpt.unwrap_model(self.accelerator.unwrap_model(self.model))

    @property
    def _patch(self) -> int:
        return self.raw_model.arch.patch_size

    def _batches(self) -> list:
        if getattr(self, "_iterator", None) is None:
            self._iterator = self.loader.batches()
        return [next(self._iterator) for _ in range(self.accumulation)]

    def _clip_gradients(self) -> torch.Tensor:
        """Clip the global gradient norm to ``grad_clip`` (0: measure only); the norm before clipping.

        accelerate unscales fp16 gradients first, and clips FSDP's sharded gradients itself.
        """
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        max_norm = self.stage.grad_clip if self.stage.grad_clip > 0 else float("inf")
        if self.stage.fsdp:
            return self.accelerator.clip_grad_norm_(params, max_norm)
        self.accelerator.unscale_gradients()
        return clip_grad_norm(params, max_norm)

    def _update_ema(self) -> None:
        if self.ema is None:
            return
        if getattr(self, "_ema_pairs", None) is None:       # the same tensors every step: listed once
            self._ema_pairs = (list(self.ema.parameters()), list(self.raw_model.parameters()))
        ema, raw = self._ema_pairs
        decay = ema_decay_at(self.step_count, self.stage)
        with torch.no_grad():
            if decay == 0.0:
                torch._foreach_copy_(ema, raw)
            else:
                torch._foreach_lerp_(ema, raw, 1.0 - decay)

    def run(self, steps: int | None = None) -> list[dict]:
        """Train until the stage's last step (or ``steps`` more), then checkpoint and sample.

        Returns ``history``. A stop request (``stop()``) ends at a step boundary with a checkpoint.
        """
        stage, acc = self.stage, self.accelerator
        target = stage.steps if steps is None else min(stage.steps, self.step_count + steps)
        if self.step_count >= target:
            if self.done and not self.past_steps:
                self._complete_outputs()           # killed after the final checkpoint: its sample grid
            return self.history
        if self._lock is not None:
            self._lock.check_exclusive(self)    # another Trainer of this process is training this folder
        bar = tqdm(total=stage.steps, initial=self.step_count, desc=f"{stage.run}/{stage.name}",
                   disable=not (self.progress and acc.is_main_process), dynamic_ncols=True)
        self._active, self.interrupted = True, False
        try:
            with StopOnInterrupt(self._stop) as interrupt:
                while self.step_count < target and not self._stop.is_set():
                    try:
                        metrics = self.step()
                    except torch.OutOfMemoryError as err:
                        raise out_of_memory(stage) from err
                    bar.update(1)
                    bar.set_postfix(loss=f"{metrics['loss']:.4f}", img_s=f"{metrics['img_per_s']:.1f}")
                    self._after_step(metrics)
                    if acc.num_processes > 1:   # every rank stops at the same step, or the collectives hang
                        wanted = torch.tensor([float(self._stop.is_set())], device=acc.device)
                        if acc.reduce(wanted, reduction="sum").item() > 0:
                            self._stop.set()
                requested = self._stop.is_set() and self.step_count < target     # stop(): the Stop button
                self.interrupted = interrupt.hit or requested
                self.stop_signal = interrupt.signal_name if interrupt.hit else ("stop" if requested else "")
                if self._checkpointed_step != self.step_count:
                    self.save_checkpoint()
                if self.done and self._sampled_step != self.step_count:
                    self.save_samples()
        finally:
            bar.close()
            self._stop.clear()          # a stop request ends this run only; a later run() trains again
            self._active = False
        if self.interrupted and acc.is_main_process:
            saved = ckpt.list_checkpoints(stage.checkpoint_dir)
            print(stopped_line(self.step_count, saved[-1] if saved else None, self.stop_signal), flush=True)
        if stage.tensorboard:
            acc.end_training()
        for fn in self.callbacks["on_end"]:
            fn(self, self.history)
        return self.history

    def _after_step(self, metrics: dict) -> None:
        stage, acc = self.stage, self.accelerator
        s = self.step_count
        scored = bool(stage.eval_every and self.evaluator is not None and s % stage.eval_every == 0)
        if scored and acc.is_main_process:
            metrics["eval"] = {k: float(v) for k, v in self.evaluator(self).items() if v is not None}
        if acc.is_main_process and (s % stage.log_every == 0 or s == stage.steps or s == 1 or scored):
            self.metrics.write(metrics)
            if stage.tensorboard:
                acc.log({k: v for k, v in metrics.items() if isinstance(v, float)}, step=s)
        for fn in self.callbacks["on_step"]:
            fn(self, metrics)
        if stage.checkpoint_every and s % stage.checkpoint_every == 0 and not self.nonfinite_streak:
            self.save_checkpoint()      # not inside a non-finite streak: keep the last good checkpoint
        if stage.sample_every and s % stage.sample_every == 0:
            self.save_samples()

    # ------------------------------------------------------------------ outputs
    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current step (atomic; retention applied); returns its path."""
        acc = self.accelerator
        acc.wait_for_everyone()
        path = None
        if acc.is_main_process:
            state = ckpt.TrainingState(step=self.step_count, rng=ckpt.capture_rng(), loader=self.loader.state_dict(),
                                       extra={"stage": self.stage.name, "nonfinite_total": self.nonfinite_total,
                                              "init_from": self.init_info, "grad_scaler": self._scaler_state(),
                                              "repa": (None if self.repa is None else
                                                       {k: v.detach().cpu() for k, v in
                                                        self.repa.projector.state_dict().items()})})
            path = ckpt.save_checkpoint(self.stage.checkpoint_dir, self.step_count,
                                        model=self.raw_model, optimizer=self.optimizer,
                                        scheduler=self.scheduler, ema=self.ema, state=state,
                                        stage_config=self.stage.to_dict(),
                                        sampling=sampling_record(self.info, self.stage), final=self.done,
                                        keep_last=self.stage.keep_last)
            ckpt.apply_retention(self.stage.checkpoint_dir, keep_last=self.stage.keep_last, log=tqdm.write)
            for fn in self.callbacks["on_checkpoint"]:
                fn(self, path)
        self._checkpointed_step = self.step_count
        acc.wait_for_everyone()
        return path

    def _scaler_state(self) -> dict | None:
        """fp16's GradScaler state (loss scale, growth tracker) as plain numbers; None otherwise."""
        scaler = self.accelerator.scaler
        if scaler is None:
            return None
        return {k: v.item() if torch.is_tensor(v) else v for k, v in scaler.state_dict().items()}

    def _complete_outputs(self) -> None:
        """A rerun of a finished stage makes what a kill after its final checkpoint left out: the sample grid."""
        if not samples_path(self.stage.stage_dir, self.step_count).is_file():
            self.save_samples()

    def sampling_model(self) -> MicroDiT:
        """The EMA model when the stage keeps one, else the raw model."""
        return self.ema if self.ema is not None else self.raw_model

    def save_samples(self) -> Path | None:
        """Sample the stage's prompts (EMA weights when present) into samples/step_NNNNNNN.png."""
        self._sampled_step = self.step_count
        if not self.accelerator.is_main_process:
            return None
        path = samples_path(self.stage.stage_dir, self.step_count)
        with writing(f"the sample grid {path.name}", path.parent):
            self.grid.save(self.sampling_model(), path, device=self.accelerator.device)
        for fn in self.callbacks["on_samples"]:
            fn(self, path)
        return path

    # ------------------------------------------------------------------ background
    def run_in_background(self, steps: int | None = None) -> threading.Thread:
        """Run ``run()`` on a daemon thread (the notebook stays responsive); ``stop()`` ends it."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("this trainer is already running")
        self._stop.clear()
        self.error = None

        def target():
            try:
                self.run(steps)
            except BaseException as err:   # surfaced through trainer.error and the dashboard
                self.error = err
                warnings.warn(f"training stopped with an error: {err}", stacklevel=2)

        self._thread = threading.Thread(target=target, name=f"train-{self.stage.name}", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, wait: bool = True, timeout: float | None = None) -> None:
        """Ask the run to end at the next step boundary (it then writes a checkpoint)."""
        self._stop.set()
        if wait and self._thread is not None and self._thread is not threading.current_thread():  # (a callback)
            self._thread.join(timeout)

    def close(self) -> None:
        """Release the stage folder's lock, so that another process may train it (the process's exit does too)."""
        if self._lock is not None:
            self._lock.release(owner=self)
            self._lock = None

    @property
    def running(self) -> bool:
        """True while ``run()`` trains, in the foreground or on the background thread."""
        return self._active or (self._thread is not None and self._thread.is_alive())

