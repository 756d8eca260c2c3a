"""The task contract shared by :class:`~pynsm.train.Trainer` and the Lightning adapter.

A *task* is an ``nn.Module`` with ``training_loss(batch)``; every other hook is
optional. Both harnesses check a task with :func:`check_task` and call its hooks
through :func:`call_hook`, so a task behaves the same under either.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

__all__ = [
    "TrainingTask",
    "OPTIONAL_HOOKS",
    "check_task",
    "call_hook",
    "step_metrics",
    "epoch_values",
    "TaskForward",
]


@runtime_checkable
class TrainingTask(Protocol):
    """What a harness needs from a task (an ``nn.Module``).

    Required:

    * ``training_loss(batch) -> Tensor``: scalar loss of one DataLoader batch.

    Optional (looked up by name, called only when present):

    * ``on_epoch_start(epoch, num_epochs)``: before the first batch of an epoch
      (``epoch`` is 0-based);
    * ``on_after_backward(epoch)``: after the (synchronised) backward, before
      gradient clipping and the optimizer step;
    * ``on_after_optimizer_step(step, total_steps)``: after each optimizer step
      (``step`` is the 0-based index of the step just taken);
    * ``step_metrics() -> Mapping[str, float | Tensor]``: after each optimizer
      step (after ``on_after_optimizer_step``); the values are averaged over the
      epoch into the history and shown in the progress bar;
    * ``embed(x) -> Tensor``: features ``[B, D]`` for readouts (not used to train).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> class Mean(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.w = nn.Parameter(torch.zeros(3))
        ...     def training_loss(self, batch):
        ...         return (batch[0] - self.w).pow(2).mean()
        >>> isinstance(Mean(), TrainingTask)
        True
        >>> isinstance(nn.Linear(2, 2), TrainingTask)
        False
    """

    def training_loss(self, batch: Any) -> Tensor: ...


#: The optional hooks a harness calls, in the order of one epoch.
OPTIONAL_HOOKS = (
    "on_epoch_start",
    "on_after_backward",
    "on_after_optimizer_step",
    "step_metrics",
)


def check_task(task: object) -> nn.Module:
    """Return ``task`` if it is an ``nn.Module`` with ``training_loss``, else raise.

    Raises:
        TypeError: ``task`` is not a module, lacks ``training_loss``, or has an
            optional hook (see :class:`TrainingTask`) that is not callable.
    """
    if not isinstance(task, nn.Module):
        raise TypeError(f"task must be a torch.nn.Module, got {type(task).__name__}")
    if not isinstance(task, TrainingTask) or not callable(task.training_loss):
        raise TypeError(
            f"task {type(task).__name__} has no training_loss(batch) method; wrap a "
            "circuit in pynsm.train.CircuitTask"
        )
    for name in OPTIONAL_HOOKS:
        hook = getattr(task, name, None)
        if hook is not None and not callable(hook):
            raise TypeError(
                f"task {type(task).__name__}: {name} must be callable, got "
                f"{type(hook).__name__}"
            )
    return task


def call_hook(task: nn.Module, name: str, *args: object) -> Any:
    """Call ``task.<name>(*args)`` if the task defines it; return its result."""
    hook = getattr(task, name, None)
    return hook(*args) if callable(hook) else None


def step_metrics(task: nn.Module) -> dict[str, float | Tensor]:
    """The task's ``step_metrics()`` checked: a mapping of names to real scalars.

    Tensors are returned detached (so a harness can average them without a device
    synchronisation at every step); numbers as ``float``.

    Raises:
        TypeError: the hook returns something else than a mapping of ``str`` to
            numbers or one-element tensors.
    """
    metrics = call_hook(task, "step_metrics")
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise TypeError(
            f"step_metrics() must return a mapping, got {type(metrics).__name__}"
        )
    checked: dict[str, float | Tensor] = {}
    for key, value in metrics.items():
        if not isinstance(key, str):
            raise TypeError(f"step_metrics() keys must be str, got {key!r}")
        if isinstance(value, Tensor) and value.numel() == 1:
            checked[key] = value.detach().reshape(())
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            checked[key] = float(value)
        else:
            raise TypeError(
                f"step_metrics()[{key!r}] must be a number or a one-element tensor, "
                f"got {type(value).__name__}"
            )
    return checked


def epoch_values(metrics: Mapping[str, Any], source: str) -> dict[str, float]:
    """A mapping of metric names to plain floats (``source`` names it in errors)."""
    if not isinstance(metrics, Mapping):
        raise TypeError(f"{source} must return a mapping, got {type(metrics).__name__}")
    values: dict[str, float] = {}
    for key, value in metrics.items():
        if not isinstance(key, str):
            raise TypeError(f"{source} keys must be str, got {key!r}")
        try:
            number = float(value)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                f"{source}[{key!r}] must be a number, got {type(value).__name__}"
            ) from None
        values[key] = number
    return values


class TaskForward(nn.Module):
    """Makes ``training_loss`` a module's ``forward`` (what DDP wraps).

    :class:`~torch.nn.parallel.DistributedDataParallel` synchronises gradients of the
    computation done inside the wrapped module's ``forward``; this wrapper routes
    ``forward(batch)`` to ``task.training_loss(batch)``.

    Args:
        task: A task (an ``nn.Module`` with ``training_loss``).

    Example:
        >>> import torch
        >>> from pynsm.arch import SimilarityMatching
        >>> from pynsm.train import CircuitTask
        >>> task = CircuitTask(SimilarityMatching(torch.nn.Linear(4, 2), 2))
        >>> TaskForward(task)(torch.randn(3, 4)).shape
        torch.Size([])
    """

    def __init__(self, task: nn.Module) -> None:
        super().__init__()
        self.task = check_task(task)

    def forward(self, batch: object) -> Tensor:
        loss = self.task.training_loss(batch)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise TypeError(
                "training_loss(batch) must return a scalar tensor, got "
                + (
                    f"shape {tuple(loss.shape)}"
                    if isinstance(loss, torch.Tensor)
                    else type(loss).__name__
                )
            )
        return loss
