"""Training: stages, the accelerate Trainer, checkpoints, monitoring, sampling from checkpoints."""

from .stages import Stage, check_stage
from .trainer import Trainer, TrainingDiverged

__all__ = ["Stage", "Trainer", "TrainingDiverged", "check_stage"]
