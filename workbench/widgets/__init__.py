"""Notebook widgets (ipywidgets, plotly figures in ``Output`` widgets): each is a thin face on the package.

    from workbench.widgets import MaskExplorer, SamplerPanel, TrainingDashboard
    MaskExplorer(model)                       # kept / dropped patches, noisy input, masked vs unmasked prediction
    MaskComparison({"a": explorer_a, "b": explorer_b})   # one set of sliders, an errors table that follows them
    SamplerPanel("runs/demo/stage4")          # prompt -> live denoising preview -> image grid -> PNG
    TrainingDashboard(trainer)                # live curves, latest samples, progress, Stop / Resume

Every widget shows itself as a cell's value and keeps its ``ipywidgets`` container in ``.widget``;
its controls are attributes, so it can be driven and checked from plain Python.
"""

from .mask_explorer import MaskComparison, MaskExplorer, patch_grid_image
from .sampler_panel import SamplerPanel
from .training_dashboard import TrainingDashboard

__all__ = ["MaskComparison", "MaskExplorer", "SamplerPanel", "TrainingDashboard", "patch_grid_image"]
