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
import threading
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data.loader import PreparedLoader
from ..devices import to_device
from ..diffusion import EDMLoss, sigma_bin_sums
from ..errors import out_of_memory, writing
from ..model import MicroDiT, null_caption
from . import checkpoint as ckpt
from .accelerator import make_accelerator
from .inference import sampling_record
from .interrupt import StopOnInterrupt
from .lock import StageLock
from .monitor import MetricsLog, PromptGrid
from .noise import draw_sample_noise
from .optim import clip_grad_norm, make_optimizer, update_ema
from .precision import BF16Compute, grad_scaler_state
from .resume import carry_optimizer, resume_trainer, start_from
from .stage_folder import clear_outputs, samples_path, stopped_line
from .sharding import FullOptimizerState, FullState, Snapshot, full_norm, local_tensors, plain_copy, shard_model
from .stages import Stage, check_stage, ema_decay_at, lr_factor
from .step_metrics import PendingMetrics, metrics_due, read_pending_steps


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
        if stage.fsdp:                              # weights in before sharding; the optimiser over the shards
            self.init_info = start_from(stage, model, self.ema, None) if stage.init_from else None
            mesh = shard_model(model.to(acc.device), acc.device)
            if self.ema is not None:
                shard_model(self.ema.to(acc.device), acc.device, mesh)       # the same shards: a local update
        optimizer = make_optimizer(model, stage, acc.device, self.repa)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, stage))
        self.loader = PreparedLoader(stage.data, stage.resolution, stage.micro_batch, seed=stage.seed,
                                     device=acc.device, rank=acc.process_index, world_size=acc.num_processes,
                                     trim_captions=not model.arch.caption_mask_compat)   # same loss, less work
        self.pending = PendingMetrics(stage.global_batch, stage.mask_ratio, repa=self.repa is not None)
        # steps between reads of the metrics from the device (a read waits for the GPU); on the CPU a read is free
        self.read_every = 1 if acc.device.type == "cpu" else stage.log_every
        self._prepare(model, optimizer)

    def _prepare(self, model: MicroDiT, optimizer) -> None:
        """``init_from``; the bf16 compute copy (``bf16-mixed``); checkpointing and compilation of the module that
        computes; accelerate's wrappers (not around a sharded model)."""
        stage, acc = self.stage, self.accelerator
        if not stage.fsdp:
            self.init_info = start_from(stage, model, self.ema, optimizer) if stage.init_from else None
        elif stage.init_from and stage.init_mode == "full":
            carry_optimizer(stage, FullOptimizerState(model, optimizer))
        self.precision = BF16Compute(model.to(acc.device)) if stage.mixed_precision == "bf16-mixed" else None
        work = self.precision.model if self.precision is not None else model
        if stage.activation_checkpointing:
            work.enable_gradient_checkpointing()
        if stage.compile:
            work.compile_blocks()                   # in place: the EMA copy and the checkpoints stay plain
        if self.repa is not None:
            self.repa.to(acc.device)
        if stage.fsdp:                              # sharded already: accelerate must not wrap it in DDP
            self.model, self.optimizer = work, acc.prepare(optimizer)
        else:
            self.model, self.optimizer = acc.prepare(work, optimizer)
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
        self.resumed_from = resume_trainer(self, resume)
        if self.precision is not None:
            self.precision.weights_from_master()            # the resumed master weights into the bf16 copy
        if acc.is_main_process and not self.past_steps:     # a stage past its steps records nothing new
            with writing("stage.yaml", stage.stage_dir):
                stage.to_yaml(stage.stage_dir / "stage.yaml")
        if stage.tensorboard:
            acc.init_trackers(stage.run, config={k: v for k, v in stage.to_dict().items()
                                                 if isinstance(v, (int, float, str, bool))})

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
        self._step()
        return read_pending_steps(self)[-1]

    def _step(self) -> None:
        """One optimiser step that reads nothing back from the device: its metrics wait in ``self.pending``."""
        acc = self.accelerator
        start = time.perf_counter()
        batches = self._batches()
        self.model.train()
        outs = [self._forward_backward(batch, len(batches), last=i == len(batches) - 1)
                for i, batch in enumerate(batches)]
        if self.precision is not None:
            self.precision.grads_to_master()                                              # bf16 -> fp32 .grad
        grad_norm = self._clip_gradients()                                                # ()
        losses = acc.gather(torch.cat([per_sample for per_sample, _, _ in outs]))         # (global_batch,)
        all_sigmas = acc.gather(torch.cat([sigma for _, sigma, _ in outs]))               # (global_batch,)
        loss = losses.float().mean()                                                      # ()
        finite = torch.isfinite(grad_norm) & torch.isfinite(loss)                         # () bool, on the device
        lr = self._update(finite)
        repa = acc.gather(torch.cat([r for _, _, r in outs])).float().mean() if self.repa is not None else None
        self.pending.add(step=self.step_count, lr=lr, seconds=time.perf_counter() - start, loss=loss,
                         grad_norm=grad_norm, finite=finite, sigma_sums=sigma_bin_sums(losses, all_sigmas),
                         repa_loss=repa)

    def _forward_backward(self, batch, micro_batches: int, *, last: bool) -> tuple:
        """One micro-batch: its noise, the caption (dropped for CFG), the loss and its gradient.

        Returns the detached per-sample losses and σ, and the per-sample REPA loss (None without REPA). Gradients
        are only all-reduced on the ``last`` micro-batch of a step.
        """
        acc, stage, model = self.accelerator, self.stage, self.model
        c, h, w = batch.latents.shape[1:]
        tokens = (h // self._patch) * (w // self._patch)
        drawn = draw_sample_noise(batch.indices, self.step_count, stage, self.edm, (c, h, w), tokens)
        sigma, noise, mask_noise, drop = to_device(drawn, acc.device)     # drawn on the host, copied without a wait
        caption, caption_mask = batch.caption_emb, batch.caption_mask   # padding trimmed by the loader
        if drawn[3].numpy().any():                              # read on the host copy: no device read
            null, null_mask = null_caption(caption, caption_mask)
            caption = torch.where(drop[:, None, None], null, caption)              # (B, L, D)
            caption_mask = torch.where(drop[:, None], null_mask, caption_mask)    # (B, L)
        if stage.fsdp:
            model.set_requires_gradient_sync(last)          # FSDP2: reduce-scatter on the last micro-batch only
        sync = acc.no_sync(model) if not last and acc.num_processes > 1 and not stage.fsdp else nullcontext()
        repa = None
        with sync, acc.autocast():
            out = self.loss_fn(model, batch.latents, caption, caption_mask, stage.mask_ratio,
                               sigma=sigma, noise=noise, mask_noise=mask_noise)
            total = out.loss
            if self.repa is not None:
                repa = self.repa.per_sample_loss(batch.latents, stage.mask_ratio, mask_noise)
                total = total + stage.repa_weight * repa.mean()
            acc.backward(total / micro_batches)
        return out.per_sample.detach(), out.sigma.detach(), None if repa is None else repa.detach()

    def _update(self, finite: torch.Tensor) -> float:
        """The optimiser, schedule and EMA updates after the backward passes; returns the LR this step used.

        A non-finite step (``finite`` False, a tensor on the device) updates no weight, no optimiser state and no
        EMA, without reading ``finite`` back: the fused AdamW skips on the device (its ``found_inf``), the
        EMA's weight is multiplied by it. fp16's GradScaler skips the update itself and lowers its scale;
        only the foreach kernel (FSDP) needs one read.
        """
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)          # under accelerate's wrapper
        if self.accelerator.scaler is not None:
            self.optimizer.step()
        elif optimizer.defaults.get("fused"):
            optimizer.found_inf = (~finite).float()       # the fused kernel's skip flag, as the GradScaler sets it
            self.optimizer.step()
        elif bool(finite):
            self.optimizer.step()
        if self.precision is not None:                      # master -> bf16 copy; the master's .grad is reused
            self.precision.weights_from_master()
            self.precision.zero_grad()
        else:
            self.optimizer.zero_grad(set_to_none=True)
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.step_count += 1
        self._update_ema(finite)
        return lr

    @property
    def raw_model(self) -> MicroDiT:
        """The trained MicroDiT itself (under bf16-mixed its fp32 master), under any DDP and compile wrappers."""
        if getattr(self, "precision", None) is not None:
            return self.precision.master
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

        accelerate unscales fp16 gradients first; FSDP's sharded gradients go through torch's clip, which
        reduces the norm over the mesh.
        """
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        max_norm = self.stage.grad_clip if self.stage.grad_clip > 0 else float("inf")
        if self.stage.fsdp:                             # sharded gradients: torch's clip reduces over the mesh
            return full_norm(torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True))
        self.accelerator.unscale_gradients()
        return clip_grad_norm(params, max_norm)

    def _update_ema(self, finite: torch.Tensor) -> None:
        if self.ema is not None:
            if getattr(self, "_ema_pairs", None) is None:       # the same tensors every step: listed once
                self._ema_pairs = (local_tensors(self.ema.parameters()), local_tensors(self.raw_model.parameters()))
            update_ema(*self._ema_pairs, ema_decay_at(self.step_count, self.stage), finite)

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
                stopping = False
                while self.step_count < target and not stopping:
                    try:
                        self._step()
                    except torch.OutOfMemoryError as err:
                        raise out_of_memory(stage) from err
                    bar.update(1)
                    if metrics_due(self, target):
                        metrics = read_pending_steps(self)[-1]
                        bar.set_postfix(loss=f"{metrics['loss']:.4f}", img_s=f"{metrics['img_per_s']:.1f}")
                        self._after_step(metrics)
                    stopping = self._stop_agreed(target)
                read_pending_steps(self)                    # steps since the last read (a stop between reads)
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

    def _stop_agreed(self, target: int) -> bool:
        """A stop request, seen by every rank at the same step (every ``read_every`` steps), else the collectives
        of the next step would hang."""
        if self.accelerator.num_processes == 1:
            return self._stop.is_set()
        if self.step_count % self.read_every and self.step_count < target:
            return False
        wanted = torch.tensor([float(self._stop.is_set())], device=self.accelerator.device)
        agreed = self.accelerator.reduce(wanted, reduction="sum").item() > 0
        if agreed:
            self._stop.set()
        return agreed       # not the local flag: a signal that lands after the reduce waits for the next agreement

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
        read_pending_steps(self)                    # the non-finite count it records is up to date
        acc.wait_for_everyone()
        model, optimizer, ema = self.checkpoint_views()
        if self.stage.fsdp:                     # gathered on every rank (collectives), written by rank 0
            model, optimizer, ema = (None if v is None else Snapshot(v) for v in (model, optimizer, ema))
        path = None
        if acc.is_main_process:
            state = ckpt.TrainingState(step=self.step_count, rng=ckpt.capture_rng(), loader=self.loader.state_dict(),
                                       extra={"stage": self.stage.name, "nonfinite_total": self.nonfinite_total,
                                              "init_from": self.init_info,
                                              "grad_scaler": grad_scaler_state(self.accelerator),
                                              "repa": (None if self.repa is None else
                                                       {k: v.detach().cpu() for k, v in
                                                        self.repa.projector.state_dict().items()})})
            path = ckpt.save_checkpoint(self.stage.checkpoint_dir, self.step_count,
                                        model=model, optimizer=optimizer, scheduler=self.scheduler, ema=ema,
                                        state=state,
                                        stage_config=self.stage.to_dict(),
                                        sampling=sampling_record(self.info, self.stage), final=self.done,
                                        keep_last=self.stage.keep_last)
            ckpt.apply_retention(self.stage.checkpoint_dir, keep_last=self.stage.keep_last, log=tqdm.write)
            for fn in self.callbacks["on_checkpoint"]:
                fn(self, path)
        self._checkpointed_step = self.step_count
        acc.wait_for_everyone()
        return path

    def _complete_outputs(self) -> None:
        """A rerun of a finished stage makes what a kill after its final checkpoint left out: the sample grid."""
        if not samples_path(self.stage.stage_dir, self.step_count).is_file():
            self.save_samples()

    def checkpoint_views(self) -> tuple:
        """(model, optimizer, EMA) as the checkpoint code reads and writes them: the objects themselves, or
        under FSDP views with full (gathered) state dicts (``sharding.FullState``)."""
        if not self.stage.fsdp:
            return self.raw_model, self.optimizer, self.ema
        return (FullState(self.raw_model), FullOptimizerState(self.raw_model, self.optimizer),
                None if self.ema is None else FullState(self.ema))

    def sampling_model(self) -> MicroDiT:
        """The EMA model when the stage keeps one, else the raw model (under FSDP a gathered plain copy)."""
        model = self.ema if self.ema is not None else self.raw_model
        if not self.stage.fsdp:
            return model
        state = FullState(model).state_dict()           # a collective: every rank calls sampling_model()
        return plain_copy(model, state, self.accelerator.device) if self.accelerator.is_main_process else model

    def save_samples(self) -> Path | None:
        """Sample the stage's prompts (EMA weights when present) into samples/step_NNNNNNN.png."""
        self._sampled_step = self.step_count
        model = self.sampling_model()                   # on every rank (FSDP gathers)
        if not self.accelerator.is_main_process:
            return None
        path = samples_path(self.stage.stage_dir, self.step_count)
        with writing(f"the sample grid {path.name}", path.parent):
            self.grid.save(model, path, device=self.accelerator.device)
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

