"""Negative cosine similarity (SimSiam)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pynsm.validation import check_float, check_int

# half precision goes through F.cosine_similarity: squared norms overflow float16
_FAST_DTYPES = (torch.float32, torch.float64)


def negative_cosine_similarity(
    x0: torch.Tensor, x1: torch.Tensor, dim: int = 1, eps: float = 1e-8
) -> torch.Tensor:
    """Mean of ``-cos(x0, x1)`` along ``dim``.

    Args:
        x0: Tensor, e.g. ``[B, D]``.
        x1: Tensor broadcastable with ``x0``.
        dim: Dimension along which the cosine similarity is computed.
        eps: Small value avoiding division by zero.

    Example:
        >>> import torch
        >>> from pynsm.losses import negative_cosine_similarity
        >>> x = torch.ones(2, 3)
        >>> round(float(negative_cosine_similarity(x, x)), 6)
        -1.0
    """
    if x0.shape == x1.shape and x0.dtype == x1.dtype in _FAST_DTYPES:
        # cos = <x0, x1> / (max(|x0|, eps) max(|x1|, eps)) from three dot products:
        # the same value as F.cosine_similarity with fewer passes forward and
        # backward (squared norms overflow only beyond 1e19 in float32)
        floor = eps * eps
        similarity = (
            torch.linalg.vecdot(x0, x1, dim=dim)
            * torch.linalg.vecdot(x0, x0, dim=dim).clamp_min(floor).rsqrt()
            * torch.linalg.vecdot(x1, x1, dim=dim).clamp_min(floor).rsqrt()
        )
        return -similarity.mean()
    # the shape check rides on the call itself (torch.broadcast_shapes alone would
    # cost as much as the whole loss at batch 256)
    try:
        similarity = F.cosine_similarity(x0, x1, dim=dim, eps=eps)
    except RuntimeError as error:
        if x0.shape == x1.shape:
            raise
        raise ValueError(
            f"x0 and x1 must have broadcastable shapes, got {tuple(x0.shape)} and "
            f"{tuple(x1.shape)}"
        ) from error
    return -similarity.mean()


class NegativeCosineSimilarity(nn.Module):
    """Negative cosine similarity, the loss of SimSiam (Chen & He 2020).

    https://arxiv.org/abs/2011.10566. Returns ``-mean(cos(x0, x1))`` with the
    cosine taken along ``dim``; apply ``.detach()`` to the target branch yourself
    for the stop-gradient of SimSiam (or use
    :class:`~pynsm.losses.SymNegCosineSimilarityLoss`).

    Args:
        dim: Dimension along which the cosine similarity is computed.
        eps: Small value to avoid division by zero, ``>= 0``.

    Raises:
        ValueError: for a negative ``eps``; in ``forward`` for shapes that do not
            broadcast.

    Shapes:
        ``x0``, ``x1``: e.g. ``[B, D]``; returns a scalar.

    Example:
        >>> import torch
        >>> from pynsm.losses import NegativeCosineSimilarity
        >>> loss_fn = NegativeCosineSimilarity()
        >>> x0, x1 = torch.randn(10, 128), torch.randn(10, 128)
        >>> loss_fn(x0, x1).shape
        torch.Size([])
    """

    def __init__(self, dim: int = 1, eps: float = 1e-8) -> None:
        super().__init__()
        self.dim = check_int("dim", dim)
        self.eps = check_float("eps", eps, minimum=0.0)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """Negative mean cosine similarity of ``x0`` and ``x1`` (a scalar)."""
        return negative_cosine_similarity(x0, x1, self.dim, self.eps)
