"""Circuits in series, each learning by its own local objective."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pynsm.train.task import CircuitTask
from pynsm.validation import check_int

__all__ = ["CircuitStack"]


class CircuitStack(nn.Module):
    """Circuits in series: the pooled fixed point of one is the input of the next.

    Each layer is a :class:`CircuitTask` and learns by its own similarity-matching
    objective on the (detached) output of the layer below, so every weight update
    stays local — no gradient crosses a layer, as in structured and deep
    similarity matching (Obeid, Ramambason & Pehlevan, NeurIPS 2019), trained
    greedily and all at once. Only the last layer may be supervised; it then sees
    the labels of the batch. With ``x_0 = x`` and ``x_{l+1} = pool_l(y_l)``::

        y_l  = circuit_l(x_l)                 (the inner iteration, no graph)
        loss = sum_l circuit_l.loss(x_l, y_l)

    ``embed(x)`` is the last layer's (pooled, flattened) output; :meth:`predict`
    classifies with the last circuit's own ``predict`` when it has one (e.g.
    :meth:`~pynsm.arch.SupervisedSimilarityMatching.predict`).

    ``step_metrics()`` reports ``residual``, the largest relative fixed-point
    residual over the layers that learnt on the last batch (see
    :class:`CircuitTask`).

    **Greedy layer-wise training** (``layerwise``): layer ``l`` learns alone for
    ``layerwise[l]`` epochs, one layer after the other, and the last layer for the
    remaining epochs. Meanwhile the layers below the learning one are frozen (their
    fixed points are computed, their loss is not, so their weights get no
    gradient) and those above are not run. When a layer starts to learn, the
    running statistics of the pool below it are reset (every module there with a
    ``reset_running_stats`` method, e.g. :class:`~pynsm.arch.RunningWhitening`),
    so that they describe the frozen features it learns on. The phase follows the
    epoch that :class:`~pynsm.train.Trainer` (or the Lightning adapter) passes to
    ``on_epoch_start``, so a resumed run is in the same phase as an uninterrupted
    one. Why (measured on MNIST, docs/mnist.md): a supervised circuit on whitened
    stroke detectors reads 97.2% when everything learns at once, because the
    whitening and the circuit's Hebbian averages mix features from every stage of
    the detectors' training; trained one layer after the other it reads 98.6%.
    Under ``DistributedDataParallel`` the resting layers' weights get no gradient:
    pass ``find_unused_parameters=True`` to the :class:`~pynsm.train.Trainer`.

    Args:
        *layers: Two or more :class:`CircuitTask`; all but the last are
            unsupervised (``num_classes=None``). Each layer's ``feature_pool``
            maps its output to the next layer's input (no flattening in between).
        layerwise: Epochs in which each layer but the last learns alone (one
            positive integer per layer but the last); ``None`` (default): every
            layer learns on every batch.

    Raises:
        TypeError: a layer is not a :class:`CircuitTask`; ``layerwise`` is not a
            sequence of integers.
        ValueError: fewer than two layers, a supervised layer below the top, or
            ``layerwise`` of the wrong length or with an entry below 1;
            ``on_epoch_start`` with too few epochs to reach the last layer.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from pynsm.arch import SimilarityMatching, SupervisedSimilarityMatching
        >>> from pynsm.train import CircuitStack, CircuitTask
        >>> conv = SimilarityMatching(nn.Conv2d(1, 4, 3), 4,
        ...                           iteration_projection=torch.relu)
        >>> features = CircuitTask(
        ...     conv, feature_pool=lambda y: nn.functional.avg_pool2d(y, 2).flatten(1))
        >>> head = CircuitTask(SupervisedSimilarityMatching(nn.Linear(64, 6), 3, 6),
        ...                    num_classes=3)
        >>> stack = CircuitStack(features, head)
        >>> batch = (torch.rand(5, 1, 10, 10), torch.tensor([0, 1, 2, 0, 1]))
        >>> stack.training_loss(batch).shape, stack.embed(batch[0]).shape
        (torch.Size([]), torch.Size([5, 6]))
        >>> stack.predict(batch[0]).shape
        torch.Size([5])
    """

    def __init__(
        self, *layers: CircuitTask, layerwise: Sequence[int] | None = None
    ) -> None:
        super().__init__()
        if len(layers) < 2:
            raise ValueError(
                f"a CircuitStack needs two or more layers, got {len(layers)}"
            )
        for index, layer in enumerate(layers):
            if not isinstance(layer, CircuitTask):
                raise TypeError(
                    f"layers[{index}] must be a CircuitTask, got {type(layer).__name__}"
                )
            if index < len(layers) - 1 and layer.num_classes is not None:
                raise ValueError(
                    f"layers[{index}] is supervised; only the last layer may see labels"
                )
        self.layerwise = _check_layerwise(layerwise, len(layers))
        self.layers = nn.ModuleList(layers)
        #: The layer that learns (``None``: all of them); set by ``on_epoch_start``.
        self.learning_layer: int | None = None if self.layerwise is None else 0

    def on_epoch_start(self, epoch: int, num_epochs: int | None) -> None:
        """Greedy layer-wise training: choose the layer that learns in ``epoch``
        and, on the first epoch of its phase, reset the statistics of the pool
        below it (no effect when ``layerwise`` is ``None``).

        ``num_epochs`` below 0 or ``None`` means no set end (Lightning with
        ``max_steps`` only).

        Raises:
            ValueError: ``num_epochs`` leaves no epoch for the last layer.
        """
        if self.layerwise is None:
            return
        starts = [0, *itertools.accumulate(self.layerwise)]
        if num_epochs is not None and 0 <= num_epochs <= starts[-1]:
            raise ValueError(
                f"layerwise={list(self.layerwise)} trains the layers below the top "
                f"for {starts[-1]} epochs: num_epochs must be more than that, got "
                f"{num_epochs}"
            )
        layer = sum(1 for start in starts[1:] if epoch >= start)
        if layer > 0 and epoch == starts[layer]:
            _reset_pool_stats(self.layers[layer - 1])
        self.learning_layer = layer

    @property
    def circuit(self) -> nn.Module:
        """The last layer's circuit (the one that reads out)."""
        return self.layers[-1].circuit

    def training_loss(self, batch: object) -> Tensor:
        """The sum of the learning layers' losses at their fixed points for this
        batch: every layer's, or in layer-wise training the learning layer's."""
        if isinstance(batch, (tuple, list)):
            x, rest = batch[0], tuple(batch[1:])
        else:
            x, rest = batch, ()
        learning = self.learning_layer
        last = len(self.layers) - 1 if learning is None else learning
        total: Tensor | None = None
        for index, layer in enumerate(self.layers[: last + 1]):
            if index == len(self.layers) - 1 and rest:
                x = (x, *rest)  # the top layer sees the labels
            if learning is not None and index < learning:
                with torch.no_grad():  # frozen: its fixed point, not its loss
                    y = layer.circuit(x)
            else:
                loss, y = layer.loss_and_output(x)
                total = loss if total is None else total + loss
            if index < last:
                x = layer.pool(y)  # detached: the circuit's forward records no graph
        assert total is not None
        return total

    def step_metrics(self) -> dict[str, Tensor]:
        """``{"residual": ...}``: the largest of the learning layers' last
        residuals."""
        learning = self.learning_layer
        layers = self.layers if learning is None else [self.layers[learning]]
        metrics = [layer.step_metrics() for layer in layers]
        residuals = [m["residual"] for m in metrics if "residual" in m]
        return {"residual": torch.stack(residuals).max()} if residuals else {}

    def features(self, x: Tensor) -> Tensor:
        """The input of the last layer: ``x`` through every layer below it."""
        for layer in self.layers[:-1]:
            x = layer.pool(layer.circuit(x))
        return x

    def forward(self, x: Tensor) -> Tensor:
        """The last circuit's output for ``x`` alone (no labels)."""
        return self.circuit(self.features(x))

    def embed(self, x: Tensor) -> Tensor:
        """Features ``[B, D]``: the last layer's pooled output, flattened."""
        return self.layers[-1].embed(self.features(x))

    def predict(self, x: Tensor) -> Tensor:
        """Classes ``[B]`` from the last circuit's own ``predict``.

        Raises:
            TypeError: the last circuit has no ``predict`` method.
        """
        predict = getattr(self.circuit, "predict", None)
        if not callable(predict):
            raise TypeError(
                f"the last circuit ({type(self.circuit).__name__}) has no predict()"
            )
        with torch.no_grad():
            return predict(self.features(x))


def _check_layerwise(
    layerwise: Sequence[int] | None, num_layers: int
) -> tuple[int, ...] | None:
    if layerwise is None:
        return None
    if isinstance(layerwise, (str, bytes)) or not isinstance(layerwise, Sequence):
        raise TypeError(
            f"layerwise must be a sequence of integers or None, got "
            f"{type(layerwise).__name__}"
        )
    if len(layerwise) != num_layers - 1:
        raise ValueError(
            f"layerwise needs one entry per layer but the last ({num_layers - 1}), "
            f"got {len(layerwise)}"
        )
    return tuple(
        check_int(f"layerwise[{index}]", count, minimum=1)
        for index, count in enumerate(layerwise)
    )


def _reset_pool_stats(layer: CircuitTask) -> None:
    """Reset the running statistics of the modules in ``layer``'s feature pool."""
    pool = layer.feature_pool
    if not isinstance(pool, nn.Module):
        return
    for module in pool.modules():
        reset = getattr(module, "reset_running_stats", None)
        if callable(reset):
            reset()
