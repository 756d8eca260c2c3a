"""Barlow Twins: make the cross-correlation of two views the identity."""

from __future__ import annotations

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn

from pynsm import distributed
from pynsm.losses._numerics import check_pair


def barlow_twins_loss(
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    lambda_param: float = 0.005,
    gather_distributed: bool = False,
) -> torch.Tensor:
    """Barlow Twins loss (Zbontar et al. 2021, Algorithm 1).

    Each view is standardised along the batch (mean 0, unbiased std 1 per
    feature); ``c = z_a_norm.T @ z_b_norm / N`` is their ``[D, D]``
    cross-correlation and the loss is
    ``sum_i (1 - c_ii)^2 + lambda_param * sum_{i != j} c_ij^2``. A feature that
    is constant over the batch standardises to 0 (not NaN).

    Args:
        z_a: ``[N, D]`` embeddings of the first views.
        z_b: ``[N, D]`` embeddings of the second views.
        lambda_param: Weight of the redundancy-reduction (off-diagonal) term.
        gather_distributed: Standardise and correlate over the batches of all
            processes (gathered with gradients), as one process with the whole
            batch would.

    Returns:
        Scalar loss.

    Example:
        >>> import torch
        >>> from pynsm.losses import barlow_twins_loss
        >>> z = torch.randn(64, 8)
        >>> bool(barlow_twins_loss(z, z) < barlow_twins_loss(z, torch.randn(64, 8)))
        True
    """
    check_pair("z_a", z_a, "z_b", z_b)
    if gather_distributed:
        z_a, z_b = distributed.gather(z_a), distributed.gather(z_b)
    batch_size = z_a.shape[0]
    if batch_size < 2:
        raise ValueError("z_a and z_b need a batch size > 1 to standardise features")
    # batch_norm standardises with the biased variance in one fused op (its tiny eps
    # only matters for constant features); the unbiased std of Algorithm 1 differs
    # by sqrt((N - 1) / N) per view, folded into the scale of c
    z_a = F.batch_norm(z_a, None, None, training=True, eps=1e-30)
    z_b = F.batch_norm(z_b, None, None, training=True, eps=1e-30)
    c = z_a.T @ z_b * ((batch_size - 1) / batch_size**2)
    on_diagonal = (1 - c.diagonal()).pow(2).sum()
    # off-diagonal squares: zero the diagonal of c^2 (exact, unlike subtracting
    # the diagonal part from the total)
    squares = c.pow(2)
    squares.diagonal().zero_()
    return on_diagonal + lambda_param * squares.sum()


class BarlowTwinsLoss(nn.Module):
    """Barlow Twins loss (Zbontar et al. 2021, https://arxiv.org/abs/2103.03230).

    Implements Algorithm 1 of the paper: the cross-correlation matrix of the two
    batch-standardised views is pushed to the identity, its diagonal by the
    invariance term and its off-diagonal by the redundancy-reduction term weighted
    by ``lambda_param``. See :func:`barlow_twins_loss`.

    Args:
        lambda_param: Weight of the off-diagonal (redundancy-reduction) term.
        gather_distributed: If ``True``, the views of all processes are gathered
            (with gradients) so that statistics and correlations are those of the
            global batch.

    Raises:
        ValueError: if ``lambda_param`` is negative, or ``gather_distributed`` is
            set without :mod:`torch.distributed`.

    Shapes:
        ``z_a``, ``z_b``: ``[N, D]`` with ``N > 1``; returns a scalar.

    Example:
        >>> import torch
        >>> from pynsm.losses import BarlowTwinsLoss
        >>> loss_fn = BarlowTwinsLoss()
        >>> out0, out1 = torch.randn(32, 16), torch.randn(32, 16)
        >>> loss_fn(out0, out1).shape
        torch.Size([])
    """

    def __init__(
        self, lambda_param: float = 0.005, gather_distributed: bool = False
    ) -> None:
        super().__init__()
        if lambda_param < 0:
            raise ValueError(f"lambda_param must be non-negative, got {lambda_param}")
        if gather_distributed and not torch_dist.is_available():
            raise ValueError(
                "gather_distributed is True but torch.distributed is not available"
            )
        self.lambda_param = lambda_param
        self.gather_distributed = gather_distributed

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        """Barlow Twins loss of two ``[N, D]`` batches of views."""
        return barlow_twins_loss(z_a, z_b, self.lambda_param, self.gather_distributed)
