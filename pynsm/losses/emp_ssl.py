"""EMP-SSL: total coding rate of every view plus agreement with the mean view."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pynsm.losses._numerics import at_least_float32, autocast_disabled, gram
from pynsm.validation import check_float

__all__ = ["EMPSSLLoss", "emp_ssl_loss", "total_coding_rate"]


def total_coding_rate(z: torch.Tensor, eps: float = 0.2) -> torch.Tensor:
    """Total coding rate ``R(Z) = 1/2 logdet(I + D / (B eps) Z^T Z)``, view mean.

    Ma et al. 2007 / Yu et al., *MCR^2*, 2020 (https://arxiv.org/abs/2006.08558),
    as used by EMP-SSL: for each view ``Z_v`` (``[B, D]``) the number of bits
    needed to code its rows up to distortion ``eps``. ``eps`` enters unsquared, as
    in EMP-SSL's official code (the paper writes ``eps^2``). Computed through a
    Cholesky factor (``logdet = 2 sum log diag L``) of the smaller of ``I_D + a Z^T
    Z`` and ``I_B + a Z Z^T`` (equal determinants), in float32 at least: both are
    symmetric with eigenvalues >= 1, so the factorisation is always stable.

    Args:
        z: ``[V, B, D]`` embeddings (or ``[B, D]`` for one view).
        eps: Distortion ``eps`` (> 0).

    Returns:
        Scalar: the mean coding rate over the views.

    Example:
        >>> import torch
        >>> from pynsm.losses import total_coding_rate
        >>> z = torch.nn.functional.normalize(torch.randn(2, 64, 8), dim=-1)
        >>> collapsed = z[:, :1].expand(2, 64, 8)
        >>> bool(total_coding_rate(z) > total_coding_rate(collapsed))
        True
    """
    eps = check_float("eps", eps, minimum=0, strict=True)
    if z.ndim == 2:
        z = z.unsqueeze(0)
    if z.ndim != 3:
        raise ValueError(f"z must have shape [views, batch, dim], got {tuple(z.shape)}")
    with autocast_disabled(z):
        z = at_least_float32(z)
        _, batch_size, dim = z.shape
        scale = dim / (batch_size * eps)
        inner = gram(z.mT) if dim <= batch_size else gram(z)
        eye = torch.eye(inner.shape[-1], dtype=z.dtype, device=z.device)
        factor = torch.linalg.cholesky(torch.add(eye, inner, alpha=scale))
        logdet = 2 * factor.diagonal(dim1=-2, dim2=-1).log().sum(dim=-1)
        return 0.5 * logdet.mean()


def emp_ssl_loss(
    z_views: Sequence[torch.Tensor] | torch.Tensor,
    tcr_eps: float = 0.2,
    inv_coef: float = 200.0,
) -> torch.Tensor:
    """EMP-SSL loss (Tong et al. 2023): ``-R + inv_coef * invariance``.

    *EMP-SSL: Towards Self-Supervised Learning in One Training Epoch*,
    https://arxiv.org/abs/2304.03977, eq. 3: the coding rate ``R``
    (:func:`total_coding_rate`, mean over the ``V`` views) is *maximised* so the
    embeddings do not collapse, and every view is pulled towards the mean of the
    views of its image::

        invariance = -1/(V B) sum_{v, b} cos(z_vb, mean_v' z_v'b)
        loss = -R(Z) + inv_coef * invariance

    Args:
        z_views: ``V`` tensors ``[B, D]`` (or one ``[V, B, D]`` tensor).
        tcr_eps: Distortion ``eps`` of the coding rate (> 0, unsquared).
        inv_coef: Weight ``lambda`` of the invariance term.

    Returns:
        Scalar loss.

    Example:
        >>> import torch
        >>> from pynsm.losses import emp_ssl_loss
        >>> views = [torch.randn(16, 8) for _ in range(4)]
        >>> emp_ssl_loss(views).shape
        torch.Size([])
    """
    tcr_eps = check_float("tcr_eps", tcr_eps, minimum=0, strict=True)
    inv_coef = check_float("inv_coef", inv_coef)
    z = _stack(z_views)
    with autocast_disabled(z):
        z = at_least_float32(z)
        # cos(z_vb, mean_v z_vb) from dot products (cheaper than F.cosine_similarity,
        # same value; eps as its default)
        mean = z.mean(dim=0, keepdim=True)
        cosine = (
            torch.linalg.vecdot(z, mean)
            * torch.linalg.vecdot(z, z).clamp_min(1e-16).rsqrt()
            * torch.linalg.vecdot(mean, mean).clamp_min(1e-16).rsqrt()
        )
        return -total_coding_rate(z, tcr_eps) - inv_coef * cosine.mean()


def _stack(z_views: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    if isinstance(z_views, torch.Tensor):
        z = z_views
    else:
        if len(z_views) == 0:
            raise ValueError("z_views must hold at least one view")
        shapes = {tuple(view.shape) for view in z_views}
        if len(shapes) != 1:
            raise ValueError(f"every view must have the same shape, got {shapes}")
        z = torch.stack(list(z_views))
    if z.ndim != 3:
        raise ValueError(
            f"z_views must be [batch, dim] views (or [views, batch, dim]), got "
            f"{tuple(z.shape)}"
        )
    return z


class EMPSSLLoss(nn.Module):
    """EMP-SSL loss: maximal coding rate per view plus invariance to the mean view.

    See :func:`emp_ssl_loss` for the formula. Parameters and defaults are lightly
    1.6.0's ``EMPSSLLoss``, and so is the invariance term, but the sign of the
    coding rate differs: lightly *adds* ``R`` (which minimises it and drives the
    embeddings to collapse), while the paper, and this loss, subtract it. So
    ``EMPSSLLoss()(z) == lightly_value - 2 * R``.

    Args:
        tcr_eps: Distortion ``eps`` of the coding rate (> 0, unsquared as in the
            official code).
        inv_coef: Weight of the invariance term (``lambda`` in the paper).

    Raises:
        TypeError: if an argument is not a number.
        ValueError: if ``tcr_eps <= 0`` or an argument is not finite.

    Shapes:
        ``z_views``: list of ``V`` tensors ``[B, D]``; returns a scalar.

    Example:
        >>> import torch
        >>> from pynsm.losses import EMPSSLLoss
        >>> z = [torch.randn(32, 16, requires_grad=True) for _ in range(4)]
        >>> EMPSSLLoss()(z).backward()
    """

    def __init__(self, tcr_eps: float = 0.2, inv_coef: float = 200.0) -> None:
        super().__init__()
        self.tcr_eps = check_float("tcr_eps", tcr_eps, minimum=0, strict=True)
        self.inv_coef = check_float("inv_coef", inv_coef)

    def forward(self, z_views: Sequence[torch.Tensor]) -> torch.Tensor:
        """EMP-SSL loss of ``V`` views, each ``[B, D]`` (a scalar)."""
        return emp_ssl_loss(z_views, self.tcr_eps, self.inv_coef)
