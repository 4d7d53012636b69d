"""Interop with the Hugging Face ecosystem: a diffusers pipeline for any workbench run.

    from workbench.interop import MicroDiTPipeline, export_pipeline
    export_pipeline("runs/demo/stage4", "exports/demo")      # workbench export runs/demo/stage4 --out exports/demo
    pipe = MicroDiTPipeline.from_pretrained("exports/demo")
    image = pipe("a red circle").images[0]
"""

from .diffusers_pipeline import MicroDiTHeunScheduler, MicroDiTPipeline, export_pipeline

__all__ = ["MicroDiTHeunScheduler", "MicroDiTPipeline", "export_pipeline"]
