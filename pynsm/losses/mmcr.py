"""Maximum manifold capacity representations (MMCR): nuclear norms of centroids."""

from __future__ import annotations

import torch
from torch import nn

from pynsm.losses._numerics import at_least_float32, autocast_disabled
from pynsm.validation import check_float

__all__ = ["MMCRLoss", "mmcr_loss"]


def mmcr_loss(
    online: torch.Tensor, momentum: torch.Tensor, lmda: float = 5e-3
) -> torch.Tensor:
    """MMCR loss (Yerxa et al. 2023): minus the nuclear norm of the view centroids.

    *Efficient Coding of Natural Images using Maximum Manifold Capacity
    Representations*, https://arxiv.org/abs/2303.03307 (eq. 3, with the
    per-sample term of their momentum-encoder ImageNet recipe). For each image
    ``b`` let ``Z_b`` be the ``[2k, D]`` matrix of its ``k`` online and ``k``
    momentum views, and ``C`` the ``[B, D]`` matrix of the centroids
    ``c_b = mean of the rows of Z_b``::

        loss = -||C||_* + lmda / B * sum_b ||Z_b||_*

    where ``||.||_*`` is the nuclear norm (sum of singular values). Maximising
    ``||C||_*`` spreads the centroids over many dimensions; the second term
    shrinks each image's manifold of views. The inputs are used as given
    (normalise them first, as the paper does). Computed in float32 at least,
    outside autocast; the gradient of a nuclear norm is ``U V^T`` and stays finite
    for repeated singular values.

    Args:
        online: ``[B, k, D]`` online-network outputs (``k`` views per image).
        momentum: ``[B, k, D]`` momentum-network outputs of the same views.
        lmda: Weight of the per-image term (>= 0).

    Returns:
        Scalar loss.

    Example:
        >>> import torch
        >>> from pynsm.losses import mmcr_loss
        >>> z = torch.nn.functional.normalize(torch.randn(8, 2, 16), dim=-1)
        >>> mmcr_loss(z, z).shape
        torch.Size([])
    """
    lmda = check_float("lmda", lmda, minimum=0.0)
    if online.ndim != 3 or online.shape != momentum.shape:
        raise ValueError(
            "online and momentum must both have shape [batch, views, dim], got "
            f"{tuple(online.shape)} and {tuple(momentum.shape)}"
        )
    with autocast_disabled(online):
        views = at_least_float32(torch.cat([online, momentum], dim=1))
        centroids = views.mean(dim=1)
        centroid_norm = torch.linalg.matrix_norm(centroids, ord="nuc")
        loss = -centroid_norm
        if lmda != 0:  # the batched SVD is the costly part: skip it when unused
            manifolds = torch.linalg.matrix_norm(views, ord="nuc").sum()
            loss = loss + lmda * manifolds / online.shape[0]
        return loss


class MMCRLoss(nn.Module):
    """Maximum manifold capacity loss (MMCR, Yerxa et al. 2023).

    See :func:`mmcr_loss` for the formula. Parameters and defaults are lightly
    1.6.0's ``MMCRLoss`` (the paper's ImageNet values).

    Args:
        lmda: Weight of the per-image nuclear norm (>= 0).

    Raises:
        TypeError: if ``lmda`` is not a number.
        ValueError: if ``lmda < 0``.

    Shapes:
        ``online``, ``momentum``: ``[B, k, D]``; returns a scalar.

    Example:
        >>> import torch
        >>> from pynsm.losses import MMCRLoss
        >>> online, momentum = torch.randn(8, 2, 16), torch.randn(8, 2, 16)
        >>> MMCRLoss()(online, momentum).shape
        torch.Size([])
    """

    def __init__(self, lmda: float = 5e-3) -> None:
        super().__init__()
        self.lmda = check_float("lmda", lmda, minimum=0.0)

    def forward(self, online: torch.Tensor, momentum: torch.Tensor) -> torch.Tensor:
        """MMCR loss of ``[B, k, D]`` online and momentum outputs (a scalar)."""
        return mmcr_loss(online, momentum, self.lmda)
