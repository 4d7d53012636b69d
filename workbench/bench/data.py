"""``workbench bench data``: prepare images/s and loader batches/s, against the nano training rate.

The prepare rate is measured on the embedded shapes source with the pixel codec and the default
text encoder (MiniLM-L6), models loaded beforehand (their load time is reported apart). The loader
rate is measured on the prepared folder just written. The issue's target is a loader at least
10x faster than a ``nano`` training step (forward + backward + AdamW step at the same batch),
which is measured in the same run so the ratio is fair on a shared machine.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..devices import default_device
from . import environment
from ..errors import InputError


def _nano_img_per_s(batch: int, resolution: int, caption: torch.Tensor, mask: torch.Tensor, steps: int) -> dict:
    """Images/s of nano training steps (forward + backward + AdamW) on random data."""
    from ..model import MicroDiT

    torch.manual_seed(0)
    device = caption.device
    model = MicroDiT.from_preset("nano", caption_dim=caption.shape[-1]).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, model.arch.in_channels, resolution, resolution, device=device)  # (B, C, H, W)
    c_noise = torch.randn(batch, device=device)                                          # (B,)

    def step():
        out = model(x, c_noise, caption, mask).sample                                     # (B, C, H, W)
        out.float().square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    sec = sorted(times)[len(times) // 2]
    return {"ms_per_step": round(sec * 1e3, 2), "img_per_s": round(batch / sec, 1), "steps": steps}


def bench_data(n: int = 512, resolution: int = 32, batch_size: int = 32, prepare_batch_size: int = 64,
               loader_batches: int = 300, text_encoder: str = "default", trim_padding: bool = False,
               nano_steps: int = 5, out: str | Path | None = None, progress=print) -> dict:
    """Measure shapes rendering, prepare images/s and loader batches/s; returns a JSON-able report.

    Args:
        n: shapes records to prepare.
        resolution: square size (pixel codec, so latents are ``(3, resolution, resolution)``).
        batch_size: loader batch size (also the nano training batch for the comparison).
        prepare_batch_size: rows per encode batch in prepare.
        loader_batches: batches timed in 5 windows (after a warm-up batch); the median window counts.
        text_encoder: ``"default"`` or a local folder.
        trim_padding: encode only real caption tokens (see ``TextEncoder``).
        nano_steps: timed nano training steps (0 skips the comparison).
        out: keep the prepared folder here (default: a temp dir, deleted).

    Example::

        report = bench_data(n=256)
        report["shapes_render"]["images_per_s"], report["prepare"]["images_per_s"], report["loader"]["images_per_s"]
    """
    from ..data.codecs import open_codec
    from ..data.text import open_text_encoder

    device = default_device()
    report = {"benchmark": "data", "n": n, "resolution": resolution, "environment": environment()}
    t0 = time.perf_counter()
    codec = open_codec("pixel")
    encoder = open_text_encoder(text_encoder, trim_padding=trim_padding)
    load_s = time.perf_counter() - t0

    tmp = None
    if out is None:
        tmp = tempfile.mkdtemp(prefix="workbench-bench-data-")
        out = Path(tmp) / "prepared"
    try:
        report["shapes_render"] = _time_shapes_render(max(n, 200), resolution)
        progress(f"shapes rendering: {report['shapes_render']['images_per_s']:.0f} img/s on one core "
                 f"(target >= 2,000)")
        report["prepare"] = _time_prepare(out, codec, encoder, n, resolution, prepare_batch_size, trim_padding)
        report["prepare"]["model_load_s"] = round(load_s, 2)
        progress(f"prepare: {report['prepare']['images']} images in {report['prepare']['seconds']:.1f}s = "
                 f"{report['prepare']['images_per_s']} img/s (shapes, pixel codec, "
                 f"{report['prepare']['text_encoder']}; models loaded in {load_s:.1f}s)")
        report["loader"], batch = _time_loader(out, resolution, batch_size, loader_batches, device)
        progress(f"loader: {report['loader']['batches_per_s']} batches/s = {report['loader']['images_per_s']} img/s "
                 f"(batch {batch_size}, {device}, median of 5 windows)")
        if nano_steps:
            nano = _nano_img_per_s(batch_size, resolution, batch.caption_emb, batch.caption_mask.long(), nano_steps)
            report["nano_train"] = nano
            report["loader_over_nano"] = round(report["loader"]["images_per_s"] / nano["img_per_s"], 1)
            report["target"] = "loader_over_nano >= 10"
            progress(f"nano train: {nano['img_per_s']} img/s -> loader is {report['loader_over_nano']}x faster "
                     "(target >= 10x)")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return report


def _time_prepare(out, codec, encoder, n: int, resolution: int, batch_size: int, trim_padding: bool) -> dict:
    """``prepare`` of ``n`` shapes records into ``out``, timed: the report's ``prepare`` section."""
    from ..data.prepare import prepare

    t0 = time.perf_counter()
    rep = prepare("shapes", out, codec=codec, text_encoder=encoder, resolutions=(resolution,), limit=n, n=n,
                  batch_size=batch_size, progress=False)
    sec = time.perf_counter() - t0
    if rep.nothing_to_do:
        raise InputError(f"{out} already holds this prepared set; pass another out= to time a fresh run")
    return {
        "images": rep.written, "seconds": round(sec, 3), "images_per_s": round(rep.written / sec, 1),
        "model_load_s": None, "codec": "pixel", "text_encoder": encoder.describe()["model_class"],
        "trim_padding": trim_padding, "batch_size": batch_size, "unique_captions": len(set(_captions(out))),
    }


def _time_loader(out, resolution: int, batch_size: int, loader_batches: int, device: str):
    """``PreparedLoader`` batches timed in 5 windows after a warm-up: (the ``loader`` section, the last batch)."""
    from ..data.loader import PreparedLoader

    loader = PreparedLoader(out, resolution, batch_size, seed=0, device=device)
    it = loader.batches()
    next(it)                                                       # warm-up: page in the files
    windows, per_window = [], max(1, loader_batches // 5)
    for _ in range(5):                                             # median of 5 windows: shared CPUs are noisy
        t0 = time.perf_counter()
        for _ in range(per_window):
            batch = next(it)
        if device == "cuda":
            torch.cuda.synchronize()
        windows.append((time.perf_counter() - t0) / per_window)
    sec = sorted(windows)[2]
    section = {
        "batch_size": batch_size, "batches": 5 * per_window, "ms_per_batch_median": round(sec * 1e3, 3),
        "ms_per_batch_windows": [round(w * 1e3, 3) for w in windows],
        "batches_per_s": round(1 / sec, 1), "images_per_s": round(batch_size / sec, 1),
        "rows": loader.num_rows, "device": device,
    }
    return section, batch


def _captions(path) -> list[str]:
    from ..data.prepared_format import load_prepared

    return load_prepared(path, format=None)["caption"]


def _time_shapes_render(n: int, resolution: int, seed: int = 0) -> dict:
    """Sampling + rendering ``n`` train scenes to numpy on this process (one core), timed: the report's
    ``shapes_render`` section ``{"images_per_s", "seconds", "n", "resolution", "mean_objects"}``."""
    from ..data.shapes import shapes_arrays

    shapes_arrays(min(n, 50), resolution, seed=seed + 1)            # warm-up
    t0 = time.perf_counter()
    _, scenes = shapes_arrays(n, resolution, seed=seed)
    seconds = time.perf_counter() - t0
    return {
        "images_per_s": n / seconds,
        "seconds": seconds,
        "n": n,
        "resolution": resolution,
        "mean_objects": float(np.mean([len(s.objects) for s in scenes])),
    }
