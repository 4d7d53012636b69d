"""Training: stages, the accelerate Trainer, checkpoints, monitoring, sampling from checkpoints."""

from .stages import Stage, check_stage
from .step_metrics import TrainingDiverged
from .trainer import Trainer

__all__ = ["Stage", "Trainer", "TrainingDiverged", "check_stage"]
