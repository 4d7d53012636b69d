"""MicroDiT Workbench: train text-to-image diffusion transformers from scratch on a micro-budget.

The notebook-facing API, imported lazily so that ``import workbench`` stays fast::

    from workbench import MicroDiT, sample
    model = MicroDiT.from_preset("nano")
    model.summary()
"""

import sys
from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "MicroDiT": "workbench.model",
    "MicroDiTConfig": "workbench.config",
    "PRESETS": "workbench.model",
    "null_caption": "workbench.model",
    "EDMConfig": "workbench.diffusion",
    "EDMLoss": "workbench.diffusion",
    "sample": "workbench.diffusion",
    "prepare": "workbench.data.prepare",
    "PreparedLoader": "workbench.data.loader",
    "shapes_dataset": "workbench.data.shapes",
    "Stage": "workbench.train",
    "Trainer": "workbench.train",
    "load_for_sampling": "workbench.train.inference",
    "Detector": "workbench.eval.detector",
    "describe_detections": "workbench.eval.compositional",
    "MicroDiTPipeline": "workbench.interop",
    "MicroDiTHeunScheduler": "workbench.interop",
    "convert_official": "workbench.interop",
    "import_mds": "workbench.data.mds_import",
    "MaskExplorer": "workbench.widgets",
    "SamplerPanel": "workbench.widgets",
    "TrainingDashboard": "workbench.widgets",
}

__all__ = sorted(_EXPORTS)

if "ipykernel" in sys.modules:              # in a notebook: a WorkbenchError shows as its one-line message
    from .kernel import show_workbench_errors_briefly

    show_workbench_errors_briefly()


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")
