"""VICReg: variance-invariance-covariance regularisation of two views.

Every term is computed in at least float32 and outside autocast: projector outputs
are not normalised, and for features of scale ~100 the covariance ``x.T @ x`` of a
float16 batch overflows (65504), while bfloat16 keeps 8 bits of each product. The
inputs are upcast (a differentiable copy), so gradients reach them in their own
dtype; the loss is float32.
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn

from pynsm import distributed
from pynsm.losses._numerics import at_least_float32, autocast_disabled


def invariance_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the two views (VICReg eq. 5).

    Args:
        x: ``[B, ..., D]`` embeddings.
        y: Same shape as ``x``.

    Example:
        >>> import torch
        >>> from pynsm.losses import invariance_loss
        >>> float(invariance_loss(torch.zeros(2, 3), torch.ones(2, 3)))
        1.0
    """
    with autocast_disabled(x):
        return F.mse_loss(at_least_float32(x), at_least_float32(y))


def variance_loss(x: torch.Tensor, eps: float = 0.0001) -> torch.Tensor:
    """Hinge on the standard deviation of each feature (VICReg eq. 1).

    ``mean_j relu(1 - sqrt(Var_batch(x_j) + eps))`` with the unbiased variance
    over dim 0, averaged over every other position and feature.

    Args:
        x: ``[B, ..., D]`` embeddings, ``B > 1``.
        eps: Added to the variance before the square root.

    Example:
        >>> import torch
        >>> from pynsm.losses import variance_loss
        >>> float(variance_loss(torch.zeros(4, 3), eps=0.0))  # collapsed: maximal
        1.0
    """
    with autocast_disabled(x):
        return _variance(at_least_float32(x), eps)


def covariance_loss(x: torch.Tensor) -> torch.Tensor:
    """Sum of squared off-diagonal covariances divided by ``D`` (VICReg eq. 3).

    The covariance is taken over dim 0 (unbiased); for inputs ``[B, ..., D]`` one
    ``[D, D]`` matrix per middle position, and the result averaged over them.

    Args:
        x: ``[B, ..., D]`` embeddings, ``B > 1``.

    Example:
        >>> import torch
        >>> from pynsm.losses import covariance_loss
        >>> x = torch.randn(100, 1).repeat(1, 2)  # two identical features
        >>> bool(covariance_loss(x) > 0.1)
        True
    """
    with autocast_disabled(x):
        return _covariance(at_least_float32(x))


# The terms without the float32 guard, for callers that hold it already (one
# autocast switch per loss rather than one per term)


def _variance(x: torch.Tensor, eps: float) -> torch.Tensor:
    std = torch.sqrt(x.var(dim=0) + eps)
    return F.relu(1.0 - std).mean()


def _covariance(x: torch.Tensor) -> torch.Tensor:
    x = x - x.mean(dim=0)
    batch_size, dim = x.shape[0], x.shape[-1]
    if x.ndim == 2:
        cov = x.T @ x / (batch_size - 1)
    else:
        cov = torch.einsum("b...c,b...d->...cd", x, x) / (batch_size - 1)
    # zero the diagonal rather than subtract it from the total (no cancellation)
    off_diagonal = 1 - torch.eye(dim, device=x.device, dtype=cov.dtype)
    return ((cov * off_diagonal).pow(2).sum(dim=(-2, -1)) / dim).mean()


def vicreg_loss(
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    lambda_param: float = 25.0,
    mu_param: float = 25.0,
    nu_param: float = 1.0,
    eps: float = 0.0001,
    gather_distributed: bool = False,
) -> torch.Tensor:
    """VICReg loss (Bardes et al. 2022, eq. 6).

    ``lambda * invariance(z_a, z_b) + mu * (variance(z_a) + variance(z_b)) / 2 +
    nu * (covariance(z_a) + covariance(z_b))``, with :func:`invariance_loss`,
    :func:`variance_loss` and :func:`covariance_loss`. With
    ``gather_distributed`` the variance and covariance are those of the batches of
    all processes (gathered with gradients); the invariance term is per sample,
    so averaging it over processes gives the global mean. Computed in at least
    float32, outside autocast (half-precision inputs give the float32 loss of the
    same values; their gradients keep the input dtype).

    Args:
        z_a: ``[B, ..., D]`` embeddings of the first views, ``B > 1``.
        z_b: Same shape as ``z_a``.
        lambda_param: Weight of the invariance term.
        mu_param: Weight of the variance term.
        nu_param: Weight of the covariance term.
        eps: Added to the variance before the square root.
        gather_distributed: Gather the views of all processes for the variance and
            covariance terms.

    Returns:
        Scalar loss.

    Example:
        >>> import torch
        >>> from pynsm.losses import vicreg_loss
        >>> vicreg_loss(torch.randn(16, 8), torch.randn(16, 8)).shape
        torch.Size([])
    """
    if z_a.shape != z_b.shape or z_a.ndim < 2:
        raise ValueError(
            "z_a and z_b must have the same shape [batch, ..., dim], got "
            f"{tuple(z_a.shape)} and {tuple(z_b.shape)}"
        )
    if z_a.shape[0] < 2:
        raise ValueError(f"z_a and z_b must have batch size > 1, got {z_a.shape[0]}")
    with autocast_disabled(z_a):
        return _vicreg(
            at_least_float32(z_a),
            at_least_float32(z_b),
            lambda_param,
            mu_param,
            nu_param,
            eps,
            gather_distributed,
        )


def _vicreg(
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    lambda_param: float,
    mu_param: float,
    nu_param: float,
    eps: float,
    gather_distributed: bool,
) -> torch.Tensor:
    # vicreg_loss on checked float32 inputs, autocast off
    invariance = F.mse_loss(z_a, z_b)
    if gather_distributed:
        z_a, z_b = distributed.gather(z_a), distributed.gather(z_b)
    variance = 0.5 * (_variance(z_a, eps) + _variance(z_b, eps))
    covariance = _covariance(z_a) + _covariance(z_b)
    return lambda_param * invariance + mu_param * variance + nu_param * covariance


class VICRegLoss(nn.Module):
    """VICReg loss (Bardes et al. 2022, https://arxiv.org/abs/2105.04906).

    Invariance (mean squared error between views), variance (hinge keeping the
    standard deviation of every feature above 1) and covariance (decorrelating
    features) terms, weighted by ``lambda_param``, ``mu_param`` and ``nu_param``,
    following the authors' code. See :func:`vicreg_loss`.

    Args:
        lambda_param: Scaling coefficient for the invariance term.
        mu_param: Scaling coefficient for the variance term.
        nu_param: Scaling coefficient for the covariance term.
        gather_distributed: If ``True``, the embeddings of all processes are
            gathered (with gradients) for the variance and covariance terms.
        eps: Epsilon for numerical stability.

    Raises:
        ValueError: if ``eps`` is negative, or ``gather_distributed`` is set
            without :mod:`torch.distributed`; in ``forward`` for shapes that differ
            or a batch of one.

    Shapes:
        ``z_a``, ``z_b``: ``[B, ..., D]``; returns a scalar.

    Example:
        >>> import torch
        >>> from pynsm.losses import VICRegLoss
        >>> loss_fn = VICRegLoss()
        >>> loss_fn(torch.randn(32, 16), torch.randn(32, 16)).shape
        torch.Size([])
    """

    def __init__(
        self,
        lambda_param: float = 25.0,
        mu_param: float = 25.0,
        nu_param: float = 1.0,
        gather_distributed: bool = False,
        eps: float = 0.0001,
    ) -> None:
        super().__init__()
        if eps < 0:
            raise ValueError(f"eps must be non-negative, got {eps}")
        if gather_distributed and not torch_dist.is_available():
            raise ValueError(
                "gather_distributed is True but torch.distributed is not available"
            )
        self.lambda_param = lambda_param
        self.mu_param = mu_param
        self.nu_param = nu_param
        self.gather_distributed = gather_distributed
        self.eps = eps

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        """Returns the VICReg loss of two ``[B, ..., D]`` batches of views."""
        return vicreg_loss(
            z_a,
            z_b,
            self.lambda_param,
            self.mu_param,
            self.nu_param,
            self.eps,
            self.gather_distributed,
        )
