"""Errors raised by the training harness (one line each, meant to be shown as is)."""

from __future__ import annotations

import signal

__all__ = [
    "CheckpointError",
    "CheckpointInUseError",
    "ResumeSettingsError",
    "TrainingDiverged",
    "TrainingInterrupted",
]


class CheckpointError(ValueError):
    """A checkpoint is unreadable, corrupt, foreign, or does not fit the trainer.

    Loading raises it *before* anything is applied: the model, optimizer and
    trainer are left as they were.
    """


class CheckpointInUseError(CheckpointError):
    """Another live run holds the lock of the same checkpoint file."""


class ResumeSettingsError(CheckpointError):
    """A resume with other settings that decide the data order than the run had.

    The seed, the per-process batch size and the number of processes decide
    which samples each step sees; continuing with others would silently give a
    run that no uninterrupted run reproduces. Raised before anything is applied.

    Attributes:
        settings: ``{name: (checkpoint's value, this trainer's value)}`` for each
            setting that differs, e.g. ``{"seed": (0, 1)}``.

    Example:
        >>> error = ResumeSettingsError("'last.pt' ...", settings={"seed": (0, 1)})
        >>> error.settings["seed"]
        (0, 1)
    """

    def __init__(self, message: str, *, settings: dict[str, tuple[int, int]]) -> None:
        super().__init__(message)
        self.settings = settings


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite.

    Raised before the offending optimizer step is applied; the last checkpoint
    (written at the end of the last complete epoch) is left untouched.

    Attributes:
        epoch: 0-based epoch in which it happened.
        step: Number of optimizer steps taken before it.
        checkpoint_path: The last good checkpoint, or ``None``.
    """

    def __init__(
        self, message: str, *, epoch: int, step: int, checkpoint_path: str | None
    ) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.checkpoint_path = checkpoint_path


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT (Ctrl-C) or SIGTERM.

    A subclass of :class:`KeyboardInterrupt`, so code that catches ``Exception``
    does not swallow it. It is raised only once any checkpoint write in progress
    has finished (the last checkpoint is intact, no temporary file is left).

    Attributes:
        signum: The signal number.
        exit_code: The conventional exit status, ``128 + signum`` (130 for
            SIGINT, 143 for SIGTERM).

    Example:
        >>> import signal
        >>> error = TrainingInterrupted(signal.SIGTERM)
        >>> error.exit_code, str(error)
        (143, 'training interrupted by SIGTERM')
    """

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        self.exit_code = 128 + self.signum
        try:
            name = signal.Signals(self.signum).name
        except ValueError:
            name = f"signal {self.signum}"
        super().__init__(f"training interrupted by {name}")
