"""Training harness: one :class:`Trainer` for circuits and self-supervised models."""

from pynsm.train.checkpoint import load_checkpoint, save_checkpoint
from pynsm.train.errors import (
    CheckpointError,
    CheckpointInUseError,
    ResumeSettingsError,
    TrainingDiverged,
    TrainingInterrupted,
)
from pynsm.train.hooks import TaskForward, TrainingTask
from pynsm.train.stack import CircuitStack
from pynsm.train.task import CircuitTask
from pynsm.train.trainer import Trainer

__all__ = [
    "Trainer",
    "CircuitTask",
    "CircuitStack",
    "TrainingTask",
    "TaskForward",
    "CheckpointError",
    "CheckpointInUseError",
    "ResumeSettingsError",
    "TrainingDiverged",
    "TrainingInterrupted",
    "save_checkpoint",
    "load_checkpoint",
]
