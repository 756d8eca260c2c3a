"""The task contract of :class:`~pynsm.train.Trainer` and the circuit adapter."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

__all__ = ["CircuitTask", "TaskForward", "check_task"]


def check_task(task: object) -> nn.Module:
    """Return ``task`` if it is an ``nn.Module`` with ``training_loss``, else raise."""
    if not isinstance(task, nn.Module):
        raise TypeError(f"task must be a torch.nn.Module, got {type(task).__name__}")
    if not callable(getattr(task, "training_loss", None)):
        raise TypeError(
            f"task {type(task).__name__} has no training_loss(batch) method; wrap a "
            "circuit in pynsm.train.CircuitTask"
        )
    return task


class TaskForward(nn.Module):
    """Makes ``training_loss`` a module's ``forward`` (what DDP wraps).

    :class:`~torch.nn.parallel.DistributedDataParallel` synchronises gradients of the
    computation done inside the wrapped module's ``forward``; this wrapper routes
    ``forward(batch)`` to ``task.training_loss(batch)``.

    Args:
        task: A task (an ``nn.Module`` with ``training_loss``).
    """

    def __init__(self, task: nn.Module) -> None:
        super().__init__()
        self.task = check_task(task)

    def forward(self, batch: object) -> Tensor:
        return self.task.training_loss(batch)


class CircuitTask(nn.Module):
    """Adapts a similarity-matching circuit to the :class:`~pynsm.train.Trainer`.

    The training loss of a batch is the circuit's own objective at its fixed point:

    * unsupervised (``num_classes=None``): ``y = circuit(x)``,
      ``loss = circuit.loss(x, y)``;
    * supervised (``num_classes`` given, batches ``(x, labels)`` with integer
      labels ``[B]``): the labels become float one-hot vectors ``[B, num_classes]``,
      ``y = circuit(x, onehot)``, ``loss = circuit.loss(x, onehot, y)``.

    ``embed(x)`` runs the circuit without labels and returns ``[B, D]`` features:
    ``feature_pool(y)`` if given (e.g. a max-pool of a convolutional output), then
    flattened.

    Args:
        circuit: A circuit of :mod:`pynsm.arch` (or any module with the same
            ``forward``/``loss`` contract).
        num_classes: Number of classes for a supervised circuit; ``None`` for an
            unsupervised one.
        feature_pool: Optional map applied to the circuit output in ``embed``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from pynsm.arch import SupervisedSimilarityMatching
        >>> from pynsm.train import CircuitTask
        >>> circuit = SupervisedSimilarityMatching(nn.Linear(4, 3), 2, 3)
        >>> task = CircuitTask(circuit, num_classes=2)
        >>> batch = (torch.randn(5, 4), torch.tensor([0, 1, 1, 0, 1]))
        >>> task.training_loss(batch).shape
        torch.Size([])
        >>> task.embed(torch.randn(5, 4)).shape
        torch.Size([5, 3])
    """

    def __init__(
        self,
        circuit: nn.Module,
        num_classes: int | None = None,
        *,
        feature_pool: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(circuit, nn.Module) or not callable(
            getattr(circuit, "loss", None)
        ):
            raise TypeError(
                "circuit must be an nn.Module with a loss(*inputs, y) method, got "
                f"{type(circuit).__name__}"
            )
        if num_classes is not None and (
            isinstance(num_classes, bool)
            or not isinstance(num_classes, int)
            or num_classes < 1
        ):
            raise ValueError(
                f"num_classes must be a positive int or None, got {num_classes!r}"
            )
        self.circuit = circuit
        self.num_classes = num_classes
        self.feature_pool = feature_pool

    def _split(self, batch: object) -> tuple[Tensor, Tensor | None]:
        if isinstance(batch, (tuple, list)):
            x = batch[0]
            labels = batch[1] if len(batch) > 1 else None
        else:
            x, labels = batch, None
        if not isinstance(x, Tensor):
            raise TypeError(
                f"batch must be a tensor or an (x, labels) pair, got {type(x).__name__}"
            )
        return x, labels

    def _onehot(self, labels: Tensor | None, x: Tensor) -> Tensor:
        assert self.num_classes is not None
        if labels is None:
            raise ValueError("a supervised CircuitTask needs (x, labels) batches")
        if labels.dim() != 1 or labels.dtype not in (torch.int32, torch.int64):
            raise ValueError(
                "labels must be integer class indices of shape [B], got "
                f"{tuple(labels.shape)} {labels.dtype}"
            )
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes - 1}]")
        onehot = nn.functional.one_hot(labels.long(), self.num_classes)
        return onehot.to(dtype=x.dtype if x.is_floating_point() else torch.float32)

    def training_loss(self, batch: object) -> Tensor:
        """The circuit's loss at the fixed point reached for this batch."""
        x, labels = self._split(batch)
        if self.num_classes is None:
            y = self.circuit(x)
            return self.circuit.loss(x, y)
        onehot = self._onehot(labels, x)
        y = self.circuit(x, onehot)
        return self.circuit.loss(x, onehot, y)

    def forward(self, x: Tensor) -> Tensor:
        """The circuit's output for ``x`` alone (no labels)."""
        return self.circuit(x)

    def embed(self, x: Tensor) -> Tensor:
        """Features ``[B, D]``: the (pooled) circuit output, flattened."""
        y = self.circuit(x)
        if self.feature_pool is not None:
            y = self.feature_pool(y)
        return y.flatten(1)
