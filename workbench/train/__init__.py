"""Training: stages, the accelerate Trainer, checkpoints, monitoring, sampling from checkpoints."""

from .stages import Stage
from .trainer import Trainer, TrainingDiverged, check_stage

__all__ = ["Stage", "Trainer", "TrainingDiverged", "check_stage"]
