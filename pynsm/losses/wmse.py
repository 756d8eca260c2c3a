"""W-MSE: mean squared error between whitened views (Ermolov et al. 2021)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pynsm.validation import check_bool, check_float, check_int

__all__ = ["WMSELoss", "Whitening2d", "norm_mse_loss", "whitening_matrix"]


def norm_mse_loss(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of L2-normalised rows: ``2 - 2 * mean_i cos(x0_i, x1_i)``.

    Example:
        >>> import torch
        >>> from pynsm.losses import norm_mse_loss
        >>> x = torch.randn(4, 3)
        >>> round(float(norm_mse_loss(x, 2 * x)), 6)
        0.0
    """
    x0, x1 = F.normalize(x0, dim=-1), F.normalize(x1, dim=-1)
    return 2 - 2 * (x0 * x1).sum(dim=-1).mean()


def whitening_matrix(covariance: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """``W = L^{-1}`` for the Cholesky factor ``L`` of the shrunk covariance.

    With ``S = (1 - eps) * covariance + eps * I = L L^T``, ``W S W^T = I``: rows
    ``x`` centred with the mean of the batch become ``x W^T``, whose covariance is
    the identity (W-MSE, Ermolov et al. 2021, eq. 4-5). The factorisation runs in
    float64 (``S`` is often badly conditioned when the batch is barely larger than
    the dimension); the result has the dtype of ``covariance``.

    Args:
        covariance: ``[D, D]`` symmetric positive definite matrix.
        eps: Shrinkage towards the identity, in ``[0, 1]``.

    Example:
        >>> import torch
        >>> from pynsm.losses import whitening_matrix
        >>> cov = torch.tensor([[4.0, 0.0], [0.0, 9.0]])
        >>> whitening_matrix(cov)
        tensor([[0.5000, 0.0000],
                [0.0000, 0.3333]])
    """
    eye = torch.eye(covariance.shape[0], dtype=torch.float64, device=covariance.device)
    shrunk = (1 - eps) * covariance.double() + eps * eye
    factor = torch.linalg.cholesky(shrunk)
    inverse = torch.linalg.solve_triangular(factor, eye, upper=False)
    return inverse.to(covariance.dtype)


class Whitening2d(nn.Module):
    """Batch whitening of ``[N, D]`` features through a Cholesky factor (W-MSE).

    In training mode the batch is centred with its own mean and multiplied by
    :func:`whitening_matrix` of its unbiased covariance (divided by ``N - 1``), so
    the output has zero mean and identity covariance; gradients flow through the
    mean, the covariance and the factorisation. With ``track_running_stats`` the
    mean and covariance are also tracked (``running = momentum * batch +
    (1 - momentum) * running``) and used instead in evaluation mode. Parameters,
    defaults and buffer shapes are lightly 1.6.0's ``Whitening2d`` (so its
    checkpoints load).

    Args:
        num_features: Feature dimension ``D``.
        momentum: Weight of the batch statistics in the running ones, ``[0, 1]``.
        track_running_stats: Track running statistics for evaluation mode.
        eps: Shrinkage of the covariance towards the identity, ``[0, 1]``.

    Attributes:
        running_mean: ``[1, D, 1, 1]`` buffer (the layout lightly uses).
        running_variance: ``[D, D]`` running covariance.

    Shapes:
        ``x``: ``[N, D]`` with ``N > D`` (else the covariance is singular);
        returns ``[N, D]``.

    Example:
        >>> import torch
        >>> from pynsm.losses import Whitening2d
        >>> white = Whitening2d(num_features=4)(torch.randn(64, 4) * 3 + 1)
        >>> torch.allclose(torch.cov(white.T), torch.eye(4), atol=1e-4)
        True
    """

    running_mean: torch.Tensor
    running_variance: torch.Tensor

    def __init__(
        self,
        num_features: int,
        momentum: float = 0.01,
        track_running_stats: bool = True,
        eps: float = 0,
    ) -> None:
        super().__init__()
        self.num_features = check_int("num_features", num_features, minimum=1)
        self.momentum = check_float("momentum", momentum, minimum=0.0, maximum=1.0)
        self.track_running_stats = check_bool(
            "track_running_stats", track_running_stats
        )
        self.eps = check_float("eps", eps, minimum=0.0, maximum=1.0)
        if self.track_running_stats:
            self.register_buffer(
                "running_mean", torch.zeros(1, self.num_features, 1, 1)
            )
            self.register_buffer("running_variance", torch.eye(self.num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Whiten the ``[N, D]`` batch ``x``; returns ``[N, D]``."""
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise ValueError(
                f"x must have shape [N, num_features={self.num_features}], got "
                f"{tuple(x.shape)}"
            )
        if x.shape[0] < 2:
            raise ValueError(f"x needs at least 2 rows to whiten, got {x.shape[0]}")
        use_running = self.track_running_stats and not self.training
        if use_running:
            mean = self.running_mean.reshape(1, -1).to(x.dtype)
            centred = x - mean
            covariance = self.running_variance.to(x.dtype)
        else:
            mean = x.mean(dim=0, keepdim=True)
            centred = x - mean
            covariance = centred.T @ centred / (x.shape[0] - 1)
        whitened = centred @ whitening_matrix(covariance, self.eps).T
        if self.training and self.track_running_stats:
            with torch.no_grad():
                self.running_mean.mul_(1 - self.momentum).add_(
                    mean.detach().reshape(self.running_mean.shape), alpha=self.momentum
                )
                self.running_variance.mul_(1 - self.momentum).add_(
                    covariance.detach(), alpha=self.momentum
                )
        return whitened


class WMSELoss(nn.Module):
    """Whitened mean squared error of several views (W-MSE, Ermolov et al. 2021).

    *Whitening for Self-Supervised Representation Learning*,
    https://arxiv.org/abs/2007.06346. The input holds ``num_samples`` views of
    ``bs`` images, view-major (rows ``i * bs`` to ``(i + 1) * bs - 1`` are view
    ``i``). For each of ``w_iter`` rounds, the images are split into sub-batches of
    ``w_size`` by a random permutation; within each sub-batch every view is
    whitened separately (:class:`Whitening2d`) and then for every pair of views
    ``i < j``::

        loss += loss_fn(z_i, z_j)        # default: norm_mse_loss

    and the total is divided by ``w_iter * num_samples * (num_samples - 1) / 2``.
    Each round draws its permutation with ``torch.randperm(bs)`` from the global
    generator, and the sub-batches are whitened sub-batch by sub-batch, view by
    view: the order of the paper's code and of lightly, so a seeded run draws the
    same sub-batches, and updates the running statistics in the same order, as
    lightly 1.6.0. Parameters and defaults are lightly's ``WMSELoss``.

    Args:
        embedding_dim: Feature dimension ``D``.
        momentum: Momentum of the whitening's running statistics.
        eps: Shrinkage of the covariance towards the identity.
        track_running_stats: Track running statistics in the whitening layer.
        w_iter: Number of whitening rounds per call.
        w_size: Sub-batch size (>= 2 * embedding_dim, for a well conditioned
            covariance).
        loss_fn: ``(x0, x1) -> scalar`` compared between whitened views.
        num_samples: Number of views per image (>= 2).

    Raises:
        TypeError: for arguments of the wrong type.
        ValueError: if ``w_size < 2 * embedding_dim`` or a value is out of range;
            in ``forward`` if the rows are not ``num_samples`` views of a number of
            images that ``w_size`` divides.

    Shapes:
        ``input``: ``[bs * num_samples, D]``; returns a scalar.

    Example:
        >>> import torch
        >>> from pynsm.losses import WMSELoss
        >>> loss_fn = WMSELoss(embedding_dim=8, w_size=16, num_samples=2)
        >>> loss_fn(torch.randn(2 * 32, 8)).shape
        torch.Size([])
    """

    def __init__(
        self,
        embedding_dim: int = 128,
        momentum: float = 0.01,
        eps: float = 0.0,
        track_running_stats: bool = True,
        w_iter: int = 1,
        w_size: int = 256,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = norm_mse_loss,
        num_samples: int = 2,
    ) -> None:
        super().__init__()
        self.whitening = Whitening2d(
            num_features=embedding_dim,
            momentum=momentum,
            eps=eps,
            track_running_stats=track_running_stats,
        )
        embedding_dim = self.whitening.num_features
        self.w_iter = check_int("w_iter", w_iter, minimum=1)
        self.w_size = check_int("w_size", w_size, minimum=2)
        if 2 * embedding_dim > self.w_size:
            raise ValueError(
                f"w_size must be at least 2 * embedding_dim = {2 * embedding_dim} "
                f"for a stable whitening, got {self.w_size}"
            )
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        self.loss_f = loss_fn
        self.num_samples = check_int("num_samples", num_samples, minimum=2)
        self.num_pairs = self.num_samples * (self.num_samples - 1) // 2

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """W-MSE loss of ``[bs * num_samples, D]`` view-major embeddings."""
        if input.ndim != 2 or input.shape[0] % self.num_samples != 0:
            raise ValueError(
                f"input must have shape [bs * num_samples={self.num_samples}, dim], "
                f"got {tuple(input.shape)}"
            )
        bs = input.shape[0] // self.num_samples
        if bs < self.w_size or bs % self.w_size != 0:
            raise ValueError(
                f"the number of images ({bs}) must be a multiple of w_size="
                f"{self.w_size}"
            )
        views = input.view(self.num_samples, bs, -1)
        loss = input.new_zeros(())
        for _ in range(self.w_iter):
            perm = torch.randperm(bs).view(-1, self.w_size).to(input.device)
            pieces: list[list[torch.Tensor]] = [[] for _ in range(self.num_samples)]
            for idx in perm:
                for i in range(self.num_samples):
                    pieces[i].append(self.whitening(views[i, idx]))
            # back to image order, so that loss_fn sees rows as the caller sent them
            inverse = perm.flatten().argsort()
            whitened = [torch.cat(p)[inverse] for p in pieces]
            for i in range(self.num_samples - 1):
                for j in range(i + 1, self.num_samples):
                    loss = loss + self.loss_f(whitened[i], whitened[j])
        return loss / (self.w_iter * self.num_pairs)
