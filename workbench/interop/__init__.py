"""Interop with the Hugging Face ecosystem: a diffusers pipeline for any workbench run.

    from workbench.interop import MicroDiTPipeline, export_pipeline
    export_pipeline("runs/demo/stage4", "exports/demo")      # workbench export runs/demo/stage4 --out exports/demo
    pipe = MicroDiTPipeline.from_pretrained("exports/demo")
    image = pipe("a red circle").images[0]

    from workbench.interop import convert_official               # the paper's released weights
    convert_official("MicroDiT_XL_2.pt", "models/xl2", vae="/models/sdxl-vae", text_encoder="/models/dfn5b")
"""

from .diffusers_pipeline import MicroDiTHeunScheduler, MicroDiTPipeline, export_pipeline
from .official import OfficialCheckpointError, convert_official

__all__ = ["MicroDiTHeunScheduler", "MicroDiTPipeline", "OfficialCheckpointError", "convert_official",
           "export_pipeline"]
