"""``workbench bench train``: training images/s of the real Trainer for presets and mask ratios.

A small shapes set is prepared in a temporary folder, then for each preset and mask ratio a
``Trainer`` runs a few steps (data loading, per-sample noise, EDM loss, backward, AdamW, EMA);
the median img/s after the first step is reported. Variants are interleaved in rounds so
machine noise hits them alike.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from statistics import median

from . import environment


def bench_train(presets=("nano", "micro"), mask_ratios=(0.0, 0.75), batch: int = 32, resolution: int = 32,
                steps: int = 6, rounds: int = 2, mixed_precision: str = "no", compile: bool = False,
                data: str | Path | None = None, progress=print) -> dict:
    """Median training img/s per (preset, mask ratio); returns a JSON-able report.

    ``data`` is a prepared dataset with ``resolution`` in it (its rows must match the presets'
    channels and caption width); by default a small shapes set is prepared in a temporary folder
    (MiniLM captions, pixel codec). The model runs on the GPU when there is one.

    Example::

        bench_train(presets=("nano",), mask_ratios=(0.75,), data="data/prepared/shapes", steps=20)
    """
    from ..data.prepare import prepare
    from ..train import Stage, Trainer

    report = {"benchmark": "train", "batch": batch, "resolution": resolution, "mixed_precision": mixed_precision,
              "compile": compile, "steps_per_round": steps, "rounds": rounds, "environment": environment(),
              "results": []}
    with tempfile.TemporaryDirectory() as tmp:
        if data is None:
            data = Path(tmp) / "shapes"
            prepare(source="shapes", out=data, resolutions=(resolution,), limit=max(4 * batch, 128),
                    text_encoder_options={"trim_padding": True}, progress=False)
        rates: dict[tuple[str, float], list[float]] = {(p, r): [] for p in presets for r in mask_ratios}
        for round_ in range(rounds):
            for preset, ratio in rates:
                stage = Stage(name=f"{preset}_{ratio}_{round_}", run="bench", runs_dir=str(Path(tmp) / "runs"),
                              data=str(data), resolution=resolution, model=preset, mask_ratio=ratio, steps=steps,
                              global_batch=batch, micro_batch=batch, lr=1e-4, ema_decay=0.999,
                              mixed_precision=mixed_precision, compile=compile, sample_steps=1,
                              sample_prompts=["a red circle"], log_every=1000)
                trainer = Trainer(stage, progress=False)
                for _ in range(steps):
                    trainer.step()
                rates[(preset, ratio)] += [h["img_per_s"] for h in trainer.history[1:]]
        for (preset, ratio), values in rates.items():
            row = {"preset": preset, "mask_ratio": ratio, "img_per_s": round(median(values), 1),
                   "ms_per_step": round(1000 * batch / median(values), 1)}
            report["results"].append(row)
            progress(f"{preset:>6} mask {ratio:.2f}: {row['img_per_s']:7.1f} img/s  ({row['ms_per_step']:.0f} ms/step, "
                     f"batch {batch}, {resolution} px)")
    return report
