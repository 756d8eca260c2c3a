"""The task contract of :class:`~pynsm.train.Trainer` and the circuit adapter."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Callable

import torch
from torch import Tensor, nn

from pynsm.train.hooks import TaskForward, check_task
from pynsm.validation import check_optional_int

__all__ = ["CircuitTask", "TaskForward", "check_task", "fixed_point_residual"]

# element-wise projections equal to ReLU: applied in place
_RELU = (torch.relu, torch.relu_, nn.functional.relu, nn.functional.relu_)


def fixed_point_residual(
    circuit: nn.Module, y: Tensor, encodings: list[Tensor]
) -> Tensor | None:
    """Relative distance of ``y`` from the circuit's fixed point.

    ``||y - P(y - eta (M y - b))|| / ||y||`` with ``b = sum_k W_k x_k`` (the
    encodings, ``[B, M]`` ones broadcast over space), ``M`` the competitor, ``eta``
    the iteration learning rate and ``P`` the iteration projection: 0 at the exact
    fixed point of the inner iteration, and how far one more iteration would move
    ``y`` otherwise. Costs one application of ``M`` (a matmul the size of ``y``).

    Args:
        circuit: A :class:`~pynsm.arch.MultiSimilarityMatching` (anything with
            ``competitor``, ``it_optim_kwargs["lr"]`` and
            ``iteration_projection``).
        y: The circuit output ``[B, M, *spatial]``.
        encodings: The encoder outputs ``W_k x_k`` of the inputs given.

    Returns:
        A 0-d tensor, or ``None`` when the circuit lacks those attributes.

    Example:
        >>> import torch
        >>> from pynsm.arch import SimilarityMatching
        >>> circuit = SimilarityMatching(torch.nn.Linear(5, 3), 3, max_iterations=200)
        >>> x = torch.randn(4, 5)
        >>> y = circuit(x)  # M = identity: the fixed point is y = P(b)
        >>> float(fixed_point_residual(circuit, y, [circuit.encoder(x)])) < 1e-5
        True
    """
    competitor = getattr(circuit, "competitor", None)
    settings = getattr(circuit, "it_optim_kwargs", None)
    if competitor is None or not isinstance(settings, dict) or "lr" not in settings:
        return None
    with torch.no_grad():
        y = y.detach()
        dtype = torch.promote_types(y.dtype, torch.float32)
        batch, channels = y.shape[:2]
        y_flat = y.to(dtype).reshape(batch, channels, -1)  # [B, M, S]
        # every step in place on one buffer: the cost of a single inner iteration
        step = torch.matmul(competitor.weight.detach().to(dtype), y_flat)  # M y
        for enc in encodings:
            spatial = enc.ndim == y.ndim
            step.sub_(
                enc.detach().to(dtype).reshape(batch, channels, -1 if spatial else 1)
            )
        step.mul_(-settings["lr"]).add_(y_flat)  # y - eta (M y - b)
        projection = getattr(circuit, "iteration_projection", None)
        if projection in _RELU or isinstance(projection, nn.ReLU):
            step.relu_()
        elif projection is not None:
            step = projection(step.view(y.shape)).reshape(batch, channels, -1)
        norm = torch.linalg.vector_norm(y_flat)
        distance = torch.linalg.vector_norm(step.sub_(y_flat))
        return distance / norm.clamp_min(torch.finfo(dtype).tiny)


@contextlib.contextmanager
def _recording_encoders(circuit: nn.Module) -> Iterator[list[Tensor]]:
    """Collect the outputs of ``circuit.encoders`` computed inside the block."""
    outputs: list[Tensor] = []
    encoders = getattr(circuit, "encoders", None)
    handles = []
    if isinstance(encoders, nn.ModuleList):
        handles = [
            encoder.register_forward_hook(
                lambda module, args, out: (
                    outputs.append(out.detach()) if isinstance(out, Tensor) else None
                )
            )
            for encoder in encoders
        ]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


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

    **Reading the progress.** The similarity-matching objective is a min-max: the
    encoders descend it while the lateral weights ``M`` *ascend* it (their gradient
    is scaled by ``-1/tau``). Its value is therefore no training curve — it may
    rise while learning works, as ``M`` tightens the competition between output
    channels. ``step_metrics()`` reports a quantity whose direction means
    something: ``residual``, the relative fixed-point residual
    ``||y - P(y - eta (M y - b))|| / ||y||`` of the last batch
    (:func:`fixed_point_residual`), i.e. how far the inner iteration stopped from
    its fixed point (small is good; if it grows, raise ``max_iterations`` or lower
    the iteration learning rate). The :class:`~pynsm.train.Trainer` averages it
    per epoch into the history and shows it on the progress bar; a readout
    accuracy (``Trainer(epoch_metrics=...)``) shows what the features are worth.

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
        if feature_pool is not None and not callable(feature_pool):
            raise TypeError(
                "feature_pool must be callable or None, got "
                f"{type(feature_pool).__name__}"
            )
        self.circuit = circuit
        self.num_classes = check_optional_int("num_classes", num_classes, minimum=1)
        self.feature_pool = feature_pool
        self._residual: Tensor | None = None

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
        return self.loss_and_output(batch)[0]

    def loss_and_output(self, batch: object) -> tuple[Tensor, Tensor]:
        """:meth:`training_loss` and the fixed point ``y`` it was evaluated at.

        For a caller that feeds ``y`` on (:class:`~pynsm.train.CircuitStack`)
        without running the inner iteration a second time.
        """
        x, labels = self._split(batch)
        inputs = (x,) if self.num_classes is None else (x, self._onehot(labels, x))
        y = self.circuit(*inputs)
        # the loss encodes the inputs anyway: keep those encodings for the residual
        with _recording_encoders(self.circuit) as encodings:
            loss = self.circuit.loss(*inputs, y)
        self._residual = fixed_point_residual(self.circuit, y, encodings)
        return loss, y

    def pool(self, y: Tensor) -> Tensor:
        """``feature_pool(y)`` (``y`` itself without one), not flattened."""
        return y if self.feature_pool is None else self.feature_pool(y)

    def step_metrics(self) -> dict[str, Tensor]:
        """``{"residual": ...}`` of the last :meth:`training_loss` (see the class).

        Empty before the first batch or for a circuit without a competitor.
        """
        return {} if self._residual is None else {"residual": self._residual}

    def forward(self, x: Tensor) -> Tensor:
        """The circuit's output for ``x`` alone (no labels)."""
        return self.circuit(x)

    def embed(self, x: Tensor) -> Tensor:
        """Features ``[B, D]``: the (pooled) circuit output, flattened."""
        return self.pool(self.circuit(x)).flatten(1)
