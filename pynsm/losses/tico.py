"""TiCo: transformation invariance and covariance contrast."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn

from pynsm import distributed
from pynsm.losses._numerics import check_pair, keep_finite


class TiCoLoss(nn.Module):
    """TiCo loss (Zhu et al. 2022, https://arxiv.org/abs/2206.10698).

    With L2-normalised views ``z_a, z_b`` (``[N, D]``), a running covariance
    ``C <- beta * C + (1 - beta) * z_a.T @ z_a / N`` (starting from zero), and::

        loss = 1 - mean_i <z_a_i, z_b_i> + rho * mean_i z_a_i^T C z_a_i

    The first term is transformation invariance, the second contrasts each
    embedding with the history of embeddings. ``C`` is held without gradient
    between calls and only stored when ``update_covariance_matrix`` is true; the
    loss always uses the freshly blended ``C`` (with gradient through the current
    batch term). ``C`` is a buffer in ``state_dict`` (a resumed run is exact; a
    ``state_dict`` without it loads and leaves ``C`` as it is), and a batch
    holding a non-finite value is not folded into it (on the CPU with a
    ``RuntimeWarning``; on an accelerator the old ``C`` is kept with
    ``torch.where``, without a host sync).

    Args:
        beta: Coefficient for the EMA update of the covariance, in ``[0, 1]``.
        rho: Weight for the covariance term of the loss.
        gather_distributed: If ``True``, the views of all processes are gathered
            (with gradients) before the loss calculation.

    Attributes:
        C: ``[D, D]`` running covariance (empty before the first call), in
            ``state_dict``.

    Raises:
        ValueError: for ``beta`` outside ``[0, 1]`` or ``gather_distributed``
            without :mod:`torch.distributed`; in ``forward`` for shapes that differ
            or a batch of one.

    Shapes:
        ``z_a``, ``z_b``: ``[N, D]``; returns a scalar.

    Example:
        >>> import torch
        >>> from pynsm.losses import TiCoLoss
        >>> loss_fn = TiCoLoss()
        >>> loss_fn(torch.randn(16, 8), torch.randn(16, 8)).shape
        torch.Size([])
        >>> loss_fn.C.shape
        torch.Size([8, 8])
    """

    C: torch.Tensor

    def __init__(
        self, beta: float = 0.9, rho: float = 20.0, gather_distributed: bool = False
    ) -> None:
        super().__init__()
        if not 0 <= beta <= 1:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        if gather_distributed and not torch_dist.is_available():
            raise ValueError(
                "gather_distributed is True but torch.distributed is not available"
            )
        self.beta = beta
        self.rho = rho
        self.gather_distributed = gather_distributed
        self.register_buffer("C", torch.empty(0))

    def forward(
        self,
        z_a: torch.Tensor,
        z_b: torch.Tensor,
        update_covariance_matrix: bool = True,
    ) -> torch.Tensor:
        """TiCo loss of two batches of views.

        Args:
            z_a: ``[N, D]`` output of the learned backbone.
            z_b: ``[N, D]`` output of the momentum-updated backbone.
            update_covariance_matrix: Store the updated running covariance.

        Returns:
            Scalar loss.
        """
        check_pair("z_a", z_a, "z_b", z_b)
        if z_a.shape[0] < 2:
            raise ValueError(
                f"z_a and z_b must have batch size > 1, got {z_a.shape[0]}"
            )
        if self.gather_distributed:
            z_a, z_b = distributed.gather(z_a), distributed.gather(z_b)
        z_a = F.normalize(z_a, dim=1)
        z_b = F.normalize(z_b, dim=1)
        n = z_a.shape[0]
        gram = z_a.T @ z_a  # n * batch covariance
        invariance = 1 - (z_a * z_b).sum(dim=1).mean()
        # mean_i z_i C z_i^T with C = beta C_prev + (1 - beta) gram / n splits into
        # beta <z C_prev, z> / n + (1 - beta) ||gram||_F^2 / n^2: the gradient then
        # needs no product with the [D, D] covariance through the batch term
        contrast = (1 - self.beta) * gram.pow(2).sum() / n**2
        previous = None
        if self.C.shape == gram.shape:
            previous = self.C.to(gram.dtype)
            if self.beta != 0:
                weighted = ((z_a @ previous) * z_a).sum() / n
                contrast = contrast + self.beta * weighted
        if update_covariance_matrix:
            with torch.no_grad():
                covariance = (1 - self.beta) * gram / n
                if previous is None:  # C starts from zero
                    previous = torch.zeros_like(covariance)
                else:
                    covariance = covariance + self.beta * previous
                # a new tensor, not an in-place copy: ``previous`` may be ``C``
                # itself, which the graph of ``contrast`` holds for backward
                (self.C,) = keep_finite([covariance], [previous], "TiCoLoss covariance")
        return invariance + self.rho * contrast

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # C is allocated at the first call: adopt the saved shape ([D, D] or empty)
        saved = state_dict.get(prefix + "C")
        if isinstance(saved, torch.Tensor) and saved.shape != self.C.shape:
            if saved.numel() and (saved.ndim != 2 or saved.shape[0] != saved.shape[1]):
                error_msgs.append(
                    f"{prefix}C: saved shape {tuple(saved.shape)} is not a [D, D] "
                    "covariance"
                )
                return
            self.C = torch.empty(saved.shape, dtype=saved.dtype, device=self.C.device)
        super()._load_from_state_dict(
            state_dict,
            prefix,
            local_metadata,
            strict,
            missing_keys,
            unexpected_keys,
            error_msgs,
        )
        # saved before C was a persistent buffer (or by lightly): keep this one
        if prefix + "C" in missing_keys:
            missing_keys.remove(prefix + "C")
