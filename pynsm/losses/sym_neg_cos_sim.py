"""Symmetrised negative cosine similarity with stop-gradient (SimSiam)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pynsm.losses.negative_cosine_similarity import negative_cosine_similarity


def _pair(name: str, out: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    if len(out) != 2 or out[0].shape != out[1].shape:
        raise ValueError(
            f"{name} must be a pair (z, p) of tensors with the same shape [batch, dim]"
        )
    return out[0], out[1]


class SymNegCosineSimilarityLoss(nn.Module):
    """Symmetrised loss of SimSiam (Chen & He 2020, eq. 3-4).

    https://arxiv.org/abs/2011.10566. With ``out0 = (z0, p0)`` and
    ``out1 = (z1, p1)`` (projections ``z``, predictions ``p``)::

        L = D(p0, stopgrad(z1)) / 2 + D(p1, stopgrad(z0)) / 2

    where ``D(p, z) = -mean_i cos(p_i, z_i)``.

    Raises:
        ValueError: in ``forward`` if an output is not a pair of equally shaped
            tensors, or the two outputs have different shapes.

    Shapes:
        ``z0, p0, z1, p1``: ``[B, D]``; returns a scalar.

    Example:
        >>> import torch
        >>> from pynsm.losses import SymNegCosineSimilarityLoss
        >>> loss_fn = SymNegCosineSimilarityLoss()
        >>> z0, p0, z1, p1 = (torch.randn(8, 16) for _ in range(4))
        >>> loss_fn((z0, p0), (z1, p1)).shape
        torch.Size([])
    """

    def __init__(self) -> None:
        super().__init__()

    def forward(
        self, out0: Sequence[torch.Tensor], out1: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """Forward pass through the symmetric loss.

        Args:
            out0: ``(z0, p0)`` for the first views: output of the backbone and
                projection MLP, and of the prediction head.
            out1: ``(z1, p1)`` for the second views.

        Returns:
            Scalar loss.
        """
        z0, p0 = _pair("out0", out0)
        z1, p1 = _pair("out1", out1)
        if z0.shape != z1.shape:
            raise ValueError(
                f"out0 and out1 must have the same shape, got {tuple(z0.shape)} "
                f"and {tuple(z1.shape)}"
            )
        loss0 = negative_cosine_similarity(p0, z1.detach(), dim=-1)
        loss1 = negative_cosine_similarity(p1, z0.detach(), dim=-1)
        return 0.5 * (loss0 + loss1)
