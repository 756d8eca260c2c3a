"""Alignment and uniformity on the hypersphere (Wang & Isola 2020)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pynsm.losses._numerics import check_pair, gram


def alignment_loss(
    x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0
) -> torch.Tensor:
    """Alignment ``mean_i ||x_i - y_i||^alpha`` of positive pairs.

    Args:
        x: ``[B, D]`` normalised embeddings.
        y: ``[B, D]`` normalised embeddings of the positives.
        alpha: Exponent of the distance.

    Example:
        >>> import torch
        >>> from pynsm.losses import alignment_loss
        >>> float(alignment_loss(torch.eye(2), torch.eye(2)))
        0.0
    """
    if alpha == 2:  # squared distance directly: exact and smooth at x == y
        return (x - y).pow(2).sum(dim=1).mean()
    return torch.linalg.vector_norm(x - y, dim=1).pow(alpha).mean()


def uniformity_loss(x: torch.Tensor, t: float = 1.0) -> torch.Tensor:
    """Uniformity ``log mean_{i<j} exp(-t ||x_i - x_j||^2)``.

    Computed as a log-sum-exp of squared distances from the Gram matrix (finite
    for any ``t`` and for coinciding points, where ``pdist`` has no gradient).

    Args:
        x: ``[B, D]`` normalised embeddings, ``B > 1``.
        t: Scale of the Gaussian potential.

    Example:
        >>> import torch
        >>> from pynsm.losses import uniformity_loss
        >>> float(uniformity_loss(torch.ones(3, 2)))  # collapsed: the maximum, 0
        0.0
    """
    batch_size = x.shape[0]
    # all B x B squared distances at once (the pairs i < j appear twice, i = j is
    # left out): mean over pairs = sum over i != j divided by B (B - 1)
    squared_norms = x.pow(2).sum(dim=1)
    squared_distances = (
        (squared_norms.unsqueeze(1) + squared_norms) - 2 * gram(x)
    ).clamp_min_(0)
    diagonal = torch.eye(batch_size, dtype=torch.bool, device=x.device)
    logits = (squared_distances * -t).masked_fill_(diagonal, -math.inf)
    return torch.logsumexp(logits.flatten(), dim=0) - math.log(
        batch_size * (batch_size - 1)
    )


def _unit_uniformity(x: torch.Tensor, t: float) -> torch.Tensor:
    """:func:`uniformity_loss` for unit rows, where ``||x_i - x_j||^2 = 2 - 2 G_ij``:
    the Gram matrix alone gives the distances (fewer passes over ``[B, B]``)."""
    batch_size = x.shape[0]
    similarity = gram(x).clamp_max(1)  # distance >= 0
    diagonal = torch.eye(batch_size, dtype=torch.bool, device=x.device)
    logits = (similarity * (2 * t)).masked_fill_(diagonal, -math.inf)
    return (
        torch.logsumexp(logits.flatten(), dim=0)
        - 2 * t
        - math.log(batch_size * (batch_size - 1))
    )


def hypersphere_loss(
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    t: float = 1.0,
    lam: float = 1.0,
    alpha: float = 2.0,
) -> torch.Tensor:
    """Alignment plus ``lam`` times the mean uniformity of both views.

    Inputs are L2-normalised first: ``align(x, y) + lam * (unif(x) + unif(y)) / 2``
    with :func:`alignment_loss` and :func:`uniformity_loss`.

    Args:
        z_a: ``[B, D]`` embeddings, ``B > 1``.
        z_b: ``[B, D]`` embeddings of the positives.
        t: Scale of the uniformity potential.
        lam: Weight of the uniformity term.
        alpha: Exponent of the alignment distance.

    Example:
        >>> import torch
        >>> from pynsm.losses import hypersphere_loss
        >>> hypersphere_loss(torch.randn(8, 4), torch.randn(8, 4)).shape
        torch.Size([])
    """
    check_pair("z_a", z_a, "z_b", z_b)
    if z_a.shape[0] < 2:
        raise ValueError(f"z_a and z_b must have batch size > 1, got {z_a.shape[0]}")
    x, y = F.normalize(z_a, dim=1), F.normalize(z_b, dim=1)
    uniformity = 0.5 * (_unit_uniformity(x, t) + _unit_uniformity(y, t))
    return alignment_loss(x, y, alpha) + lam * uniformity


class HypersphereLoss(nn.Module):
    """Alignment and uniformity loss (Wang & Isola 2020).

    From "Understanding Contrastive Representation Learning through Alignment and
    Uniformity on the Hypersphere" (https://arxiv.org/abs/2005.10242): the
    embeddings are normalised onto the unit hypersphere (L2), then positive pairs
    are pulled together (alignment, exponent ``alpha``) while each view is spread
    uniformly (uniformity, Gaussian potential with scale ``t``, weight ``lam``).
    See :func:`hypersphere_loss`. As the normalisation is part of the loss, it is
    recommended to also normalise in the model (e.g. for inference), and to feed
    the loss from a linear and/or batch-norm layer rather than a ReLU, which would
    confine the embeddings to the positive orthant.

    Args:
        t: Scale of the uniformity potential, ``> 0``.
        lam: Weight of the uniformity term.
        alpha: Exponent of the alignment distance, ``> 0``.

    Raises:
        ValueError: for ``t <= 0`` or ``alpha <= 0``; in ``forward`` for shapes that
            differ or a batch of one.

    Shapes:
        ``z_a``, ``z_b``: ``[B, D]``; returns a scalar.

    Example:
        >>> import torch
        >>> from pynsm.losses import HypersphereLoss
        >>> loss_fn = HypersphereLoss()
        >>> loss_fn(torch.randn(16, 8), torch.randn(16, 8)).shape
        torch.Size([])
    """

    def __init__(self, t: float = 1.0, lam: float = 1.0, alpha: float = 2.0) -> None:
        super().__init__()
        if t <= 0:
            raise ValueError(f"t must be positive, got {t}")
        if alpha <= 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        self.t = t
        self.lam = lam
        self.alpha = alpha

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        """Loss of two ``[B, D]`` batches of views (a scalar)."""
        return hypersphere_loss(z_a, z_b, self.t, self.lam, self.alpha)
