"""The KoLeo regulariser: spread embeddings by pushing nearest neighbours apart."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pynsm.losses._numerics import at_least_float32, autocast_disabled
from pynsm.validation import check_float

__all__ = ["KoLeoLoss", "koleo_loss"]


def koleo_loss(x: torch.Tensor, p: float = 2, eps: float = 1e-8) -> torch.Tensor:
    """Kozachenko-Leonenko differential-entropy regulariser (KoLeo).

    Sablayrolles et al., *Spreading vectors for similarity search*, 2019
    (https://arxiv.org/abs/1806.03198, eq. 4), as used in DINOv2: with the rows of
    ``x`` L2-normalised and ``rho_i`` the distance from row ``i`` to its nearest
    other row::

        loss = -1/B sum_i log(rho_i + eps)

    Minimising it maximises the Kozachenko-Leonenko estimate of the entropy of the
    embeddings (up to constants), i.e. spreads them uniformly. The nearest
    neighbour is the row of largest cosine similarity (the Euclidean nearest one
    for unit vectors); ``rho_i = ||x_i - x_nn(i) + eps||_p``
    (:func:`torch.nn.functional.pairwise_distance`), so duplicated rows give a
    large but finite loss and gradient. The neighbour search carries no gradient.
    The loss depends only on the directions of the rows, at any scale: each row is
    first divided (exactly) by a power of two near its largest entry, so its norm
    neither overflows nor falls below ``eps``. (lightly normalises directly, which
    agrees except for rows of norm below ``eps`` or beyond the float range.)

    Args:
        x: ``[B, D]`` embeddings, ``B >= 2``.
        p: Norm degree of the distance (> 0).
        eps: Small constant in the normalisation, the distance and the log (>= 0).

    Returns:
        Scalar loss.

    Example:
        >>> import torch
        >>> from pynsm.losses import koleo_loss
        >>> spread = torch.eye(4)
        >>> clustered = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.01, 1.0]])
        >>> bool(koleo_loss(spread) < koleo_loss(clustered))
        True
    """
    p = check_float("p", p, minimum=0, strict=True)
    eps = check_float("eps", eps, minimum=0)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"x must have shape [batch >= 2, dim], got {tuple(x.shape)}")
    with autocast_disabled(x):
        x = at_least_float32(x)
        with torch.no_grad():
            # divide each row by a power of two near its largest entry: exact, the
            # direction is unchanged, and the norm can neither overflow (rows of
            # 1e30 in float32) nor fall below eps (rows of 1e-30)
            peak = x.abs().amax(dim=-1, keepdim=True)
            power = torch.ldexp(torch.ones_like(peak), torch.frexp(peak).exponent)
            power = torch.where(peak > 0, power, torch.ones_like(power))
        x = F.normalize(x / power, p=2, dim=-1, eps=eps)
        with torch.no_grad():
            similarity = x @ x.T
            similarity.fill_diagonal_(-2.0)  # below any cosine: never oneself
            neighbour = similarity.argmax(dim=1)
        distance = F.pairwise_distance(x, x[neighbour], p=p, eps=eps)
        return -(distance + eps).log().mean()


class KoLeoLoss(nn.Module):
    """KoLeo regulariser of DINOv2 (Sablayrolles et al. 2019).

    See :func:`koleo_loss` for the formula. Parameters and defaults are lightly
    1.6.0's ``KoLeoLoss``; computed on the local batch (as DINOv2 does).

    Args:
        p: Norm degree of the nearest-neighbour distance (> 0).
        eps: Small constant avoiding division by zero and ``log(0)`` (>= 0).

    Raises:
        TypeError: if ``p`` or ``eps`` is not a number.
        ValueError: if ``p <= 0`` or ``eps < 0``.

    Shapes:
        ``x``: ``[B, D]`` with ``B >= 2``; returns a scalar.

    Example:
        >>> import torch
        >>> from pynsm.losses import KoLeoLoss
        >>> KoLeoLoss()(torch.randn(8, 16)).shape
        torch.Size([])
    """

    def __init__(self, p: float = 2, eps: float = 1e-8) -> None:
        super().__init__()
        self.p = check_float("p", p, minimum=0, strict=True)
        self.eps = check_float("eps", eps, minimum=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """KoLeo loss of the ``[B, D]`` batch ``x`` (a scalar)."""
        return koleo_loss(x, p=self.p, eps=self.eps)
