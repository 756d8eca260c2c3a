"""Catching divergence: a non-finite loss before its step, non-finite weights
before a checkpoint."""

from __future__ import annotations

import math
import os

import torch
import torch.distributed as dist
from torch import Tensor, nn

from pynsm.train.errors import TrainingDiverged

__all__ = ["all_finite", "loss_diverged", "check_finite_weights"]


def all_finite(loss: Tensor, world_size: int) -> bool:
    """Whether ``loss`` is finite on every process (all processes get the same
    answer: one all-reduce of one number).

    Example:
        >>> all_finite(torch.tensor(1.0), 1), all_finite(torch.tensor(float("nan")), 1)
        (True, False)
    """
    flag = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
    if world_size > 1 and dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _kept(path: str | None, epochs_done: int) -> str:
    if path is None or not os.path.isfile(path):
        return ""
    return f"; the last checkpoint ({path}, epoch {epochs_done}) is kept"


def loss_diverged(
    loss: Tensor,
    *,
    epoch: int,
    batch: int,
    step: int,
    epochs_done: int,
    checkpoint_path: str | None,
) -> TrainingDiverged:
    """The one-line error for a non-finite loss at ``batch`` (0-based) of ``epoch``."""
    value = loss.detach().float().item()
    what = (
        f"the loss is {value}"
        if not math.isfinite(value)
        else "the loss is not finite on another process"
    )
    return TrainingDiverged(
        f"training diverged: {what} at epoch {epoch + 1}, batch {batch + 1} "
        f"(after {step} optimizer steps); the step was not applied"
        + _kept(checkpoint_path, epochs_done),
        epoch=epoch,
        step=step,
        checkpoint_path=checkpoint_path,
    )


def check_finite_weights(
    task: nn.Module,
    *,
    epoch: int,
    step: int,
    epochs_done: int,
    checkpoint_path: str | None,
) -> None:
    """Raise :class:`TrainingDiverged` if a parameter holds NaN or inf.

    A finite loss can still leave non-finite weights behind (the last step of an
    epoch); checked before a checkpoint is written, they never replace the last
    good one.
    """
    for name, param in task.named_parameters():
        if not bool(torch.isfinite(param.detach()).all()):
            raise TrainingDiverged(
                f"training diverged: parameter {name!r} is not finite after epoch "
                f"{epoch + 1}" + _kept(checkpoint_path, epochs_done),
                epoch=epoch,
                step=step,
                checkpoint_path=checkpoint_path,
            )
