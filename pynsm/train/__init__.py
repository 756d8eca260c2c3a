"""Training harness: one :class:`Trainer` for circuits and self-supervised models."""

from pynsm.train.checkpoint import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from pynsm.train.task import CircuitTask, TaskForward
from pynsm.train.trainer import Trainer

__all__ = [
    "Trainer",
    "CircuitTask",
    "TaskForward",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
]
