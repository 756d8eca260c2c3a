"""Circuits in series, each learning by its own local objective."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pynsm.train.task import CircuitTask

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
    residual over the layers for the last batch (see :class:`CircuitTask`).

    Args:
        *layers: Two or more :class:`CircuitTask`; all but the last are
            unsupervised (``num_classes=None``). Each layer's ``feature_pool``
            maps its output to the next layer's input (no flattening in between).

    Raises:
        TypeError: a layer is not a :class:`CircuitTask`.
        ValueError: fewer than two layers, or a supervised layer below the top.

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

    def __init__(self, *layers: CircuitTask) -> None:
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
        self.layers = nn.ModuleList(layers)

    @property
    def circuit(self) -> nn.Module:
        """The last layer's circuit (the one that reads out)."""
        return self.layers[-1].circuit

    def training_loss(self, batch: object) -> Tensor:
        """The sum of every layer's loss at its fixed point for this batch."""
        if isinstance(batch, (tuple, list)):
            x, rest = batch[0], tuple(batch[1:])
        else:
            x, rest = batch, ()
        total: Tensor | None = None
        for layer in self.layers[:-1]:
            loss, y = layer.loss_and_output(x)
            total = loss if total is None else total + loss
            x = layer.pool(y)  # detached: the circuit's forward records no graph
        top = self.layers[-1]
        loss, _ = top.loss_and_output((x, *rest) if rest else x)
        assert total is not None
        return total + loss

    def step_metrics(self) -> dict[str, Tensor]:
        """``{"residual": ...}``: the largest of the layers' last residuals."""
        metrics = [layer.step_metrics() for layer in self.layers]
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
