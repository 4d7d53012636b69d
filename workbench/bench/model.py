"""``workbench bench model``: forward+backward time of MicroDiT presets with and without masking.

Reports ms/step at mask ratios 0 and 0.75 and compares the realised speed-up of masking with
the FLOP-theoretical one from ``MicroDiT.flops`` (target: realised >= 0.9x theoretical).
"""

from __future__ import annotations

import torch

from ..devices import default_device
from ..model import MicroDiT
from . import environment, interleaved_timings


def bench_model(presets=("nano", "micro"), batch: int = 16, latent_size: int = 32, caption_len: int = 77,
                mask_ratios=(0.0, 0.75), repeats: int = 5, bf16: bool = False, compile: bool = False,
                gradient_checkpointing: bool = False, weights_bf16: bool = False, progress=print) -> dict:
    """Time one training forward+backward per preset and mask ratio; returns a JSON-able report.

    ``latent_size`` is the side of the model's input (latents for 4-channel presets such as xl_2:
    32 is the paper's 256 px stage). On a GPU, ``bf16=True, compile=True`` is the paper's setting;
    ``compile`` compiles each block (``MicroDiT.compile_blocks``, as ``Stage.compile`` does) and
    ``gradient_checkpointing`` recomputes each block's activations in the backward pass; ``weights_bf16``
    times the bf16 compute copy of ``mixed_precision: bf16-mixed`` (bf16 weights and inputs, no autocast).

    Example::

        bench_model(presets=("xl_2",), batch=64, latent_size=32, bf16=True)   # on a GPU
    """
    report = {"benchmark": "model", "batch": batch, "latent_size": latent_size, "caption_len": caption_len,
              "autocast_bf16": bf16, "compile": compile, "gradient_checkpointing": gradient_checkpointing,
              "weights_bf16": weights_bf16, "environment": environment(), "results": []}
    device = default_device()
    for name in presets:
        torch.manual_seed(0)
        model = MicroDiT.from_preset(name).to(device).train()
        if weights_bf16:
            model = model.bfloat16()
        c = model.arch
        if gradient_checkpointing:
            model.enable_gradient_checkpointing()
        if compile:
            model.compile_blocks()
        dtype = torch.bfloat16 if weights_bf16 else torch.float32
        x = torch.randn(batch, c.in_channels, latent_size, latent_size, device=device, dtype=dtype)
        caption = torch.randn(batch, caption_len, c.caption_dim, device=device, dtype=dtype)
        mask = torch.ones(batch, caption_len, dtype=torch.long, device=device)
        c_noise = torch.randn(batch, device=device, dtype=dtype)

        inputs = (x, c_noise, caption, mask)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        steps = {str(r): _train_step(model, inputs, r, bf16) for r in mask_ratios}
        seconds = interleaved_timings(steps, repeats, warmup=3 if compile else 2)
        peak_gib = round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None
        base = str(mask_ratios[0])
        for ratio in mask_ratios:
            row = {"preset": name, "params": sum(p.numel() for p in model.parameters()), "mask_ratio": ratio,
                   "ms_per_step": round(seconds[str(ratio)] * 1000, 2),
                   "img_per_s": round(batch / seconds[str(ratio)], 1),
                   "train_gflop_per_step": round(3 * model.flops(latent_size, ratio, batch, caption_len) / 1e9, 3)}
            row["achieved_gflop_per_s"] = round(row["train_gflop_per_step"] / seconds[str(ratio)], 1)
            if peak_gib is not None:
                row["peak_gpu_memory_gib"] = peak_gib       # the largest over this preset's mask ratios
            if ratio != mask_ratios[0]:
                realised = seconds[base] / seconds[str(ratio)]
                theoretical = model.flops(latent_size, mask_ratios[0], batch, caption_len) / model.flops(
                    latent_size, ratio, batch, caption_len)
                row.update(realised_speedup=round(realised, 3), theoretical_speedup=round(theoretical, 3),
                           realised_over_theoretical=round(realised / theoretical, 3))
            report["results"].append(row)
            progress(f"{name:>6}  batch {batch}  {latent_size}x{latent_size}  mask {ratio:.2f}: "
                     f"{row['ms_per_step']:8.1f} ms/step  {row['img_per_s']:7.1f} img/s"
                     + (f"  speed-up {row['realised_speedup']:.2f}x of {row['theoretical_speedup']:.2f}x theoretical"
                        if "realised_speedup" in row else ""))
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    return report


def _train_step(model: MicroDiT, inputs: tuple, mask_ratio: float, bf16: bool):
    """One forward + backward of ``model`` on fixed ``inputs``, as a closure."""
    device = inputs[0].device.type

    def run():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            out = model(*inputs, mask_ratio=mask_ratio).sample
        out.float().square().mean().backward()
        model.zero_grad(set_to_none=True)
    return run
