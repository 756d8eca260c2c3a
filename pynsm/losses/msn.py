"""The Masked Siamese Networks loss (MSN) and its prior-matching form (PMSN)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pynsm.losses._numerics import (
    at_least_float32,
    autocast_disabled,
    check_distributed_available,
)
from pynsm.losses.sinkhorn import sinkhorn_log
from pynsm.validation import check_float, check_int

__all__ = [
    "MSNLoss",
    "power_law_distribution",
    "prototype_probabilities",
    "sharpen",
]

TargetDistribution = Callable[[torch.Tensor], torch.Tensor]


class _MeMaxWeightDeprecation(DeprecationWarning, UserWarning):
    """``me_max_weight`` is deprecated (a DeprecationWarning that is also a
    UserWarning, so both kinds of filter catch it)."""


def prototype_probabilities(
    queries: torch.Tensor, prototypes: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Soft assignment of each query to the prototypes.

    ``softmax(queries @ prototypes.T / temperature)`` over prototypes.

    Args:
        queries: ``[B, D]``.
        prototypes: ``[K, D]``.
        temperature: Scale of the similarities (> 0).

    Returns:
        ``[B, K]``, every row sums to one.

    Example:
        >>> import torch
        >>> from pynsm.losses import prototype_probabilities
        >>> p = prototype_probabilities(torch.randn(4, 8), torch.randn(3, 8), 0.1)
        >>> p.shape
        torch.Size([4, 3])
    """
    temperature = check_float("temperature", temperature, minimum=0, strict=True)
    return F.softmax(queries @ prototypes.T / temperature, dim=1)


def sharpen(probabilities: torch.Tensor, temperature: float) -> torch.Tensor:
    """Sharpen distributions: ``p ** (1 / temperature)``, renormalised per row.

    Computed as ``softmax(log(p) / temperature)``, which cannot overflow.

    Args:
        probabilities: ``[B, K]``, rows are distributions.
        temperature: In ``(0, 1]`` to sharpen (smaller is sharper).

    Returns:
        ``[B, K]`` sharpened distributions.

    Example:
        >>> import torch
        >>> from pynsm.losses import sharpen
        >>> sharpen(torch.tensor([[0.25, 0.75]]), 0.5)
        tensor([[0.1000, 0.9000]])
    """
    temperature = check_float("temperature", temperature, minimum=0, strict=True)
    return F.softmax(probabilities.log() / temperature, dim=1)


def power_law_distribution(
    size: int,
    exponent: float,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Power-law prior over prototypes: entry ``k`` proportional to ``k ** -exponent``.

    ``k`` runs from 1 to ``size`` (the PMSN prior of Assran et al., 2022,
    https://arxiv.org/abs/2210.07277).

    Args:
        size: Number of prototypes ``K`` (>= 1).
        exponent: Power-law exponent (0 gives the uniform distribution).
        device: Device of the result.
        dtype: Floating dtype of the result.

    Returns:
        ``[K]`` distribution summing to one.

    Example:
        >>> from pynsm.losses import power_law_distribution
        >>> power_law_distribution(3, 1.0)
        tensor([0.5455, 0.2727, 0.1818])
    """
    size = check_int("size", size, minimum=1)
    k = torch.arange(1, size + 1, device=device, dtype=torch.float64)
    dist = k.pow(-float(exponent))
    return (dist / dist.sum()).to(dtype)


class MSNLoss(nn.Module):
    """Loss of Masked Siamese Networks (MSN), optionally with a PMSN prior.

    Assran et al., *Masked Siamese Networks for Label-Efficient Learning*, 2022,
    https://arxiv.org/abs/2204.07141; prior matching from Assran et al., *The Hidden
    Uniform Cluster Prior in Self-Supervised Learning*, 2022,
    https://arxiv.org/abs/2210.07277.

    Anchors, targets and prototypes are L2-normalised. With ``p_a = softmax(a·c/T)``
    the anchor assignments and ``q`` the target assignments (computed without
    gradient, sharpened with ``target_sharpen_temperature`` and balanced by
    ``sinkhorn_iterations`` Sinkhorn steps), the loss is
    ``mean_anchors(H(q, p_a)) + regularization_weight * R(mean_anchors(p_a))`` where
    every anchor view is matched to the target of its image, ``H`` is the cross
    entropy and ``R`` the regulariser:

    - ``"uniform"`` (default): mean-entropy maximisation,
      ``R(p) = sum(p log p) + log K`` (= KL(p || uniform));
    - ``"power_law"``: ``R(p) = KL(pi || p)`` with ``pi_k`` proportional to
      ``k ** -power_law_exponent``;
    - a callable ``f`` mapping the mean anchor probabilities ``[K]`` to a target
      distribution: ``R(p) = KL(f(p) || p)``.

    Everything is computed in log space in float32 at least (outside autocast), so
    ``temperature=0.01`` and bf16 inputs stay finite.

    Args:
        temperature: Similarities are divided by it; in ``(0, inf)``.
        sinkhorn_iterations: Sinkhorn iterations on the targets (>= 0; 0 disables).
        regularization_weight: Weight ``lambda`` of the regulariser (0 disables).
        me_max_weight: Deprecated alias of ``regularization_weight``; takes
            precedence when not ``None`` and emits a ``DeprecationWarning`` (also a
            ``UserWarning``).
        gather_distributed: Balance the Sinkhorn targets over the samples of all
            processes. The regulariser always uses this process's anchors.
        target_distribution: ``"uniform"``, ``"power_law"`` or a callable.
        power_law_exponent: Exponent of the ``"power_law"`` prior.

    Shapes:
        ``anchors [B * V, D]`` (``V`` anchor views, view-major: rows ``v * B + i``),
        ``targets [B, D]``, ``prototypes [K, D]`` → scalar.

    Example:
        >>> import torch
        >>> from pynsm.losses import MSNLoss
        >>> loss_fn = MSNLoss()
        >>> anchors = torch.randn(2 * 4, 16, requires_grad=True)  # 2 views of 4 images
        >>> targets = torch.randn(4, 16)
        >>> prototypes = torch.randn(10, 16, requires_grad=True)
        >>> loss = loss_fn(anchors, targets, prototypes=prototypes)
        >>> loss.backward()
        >>> loss.shape
        torch.Size([])
    """

    def __init__(
        self,
        temperature: float = 0.1,
        sinkhorn_iterations: int = 3,
        regularization_weight: float = 1.0,
        me_max_weight: float | None = None,
        gather_distributed: bool = False,
        target_distribution: str | TargetDistribution = "uniform",
        power_law_exponent: float = 0.25,
    ) -> None:
        super().__init__()
        temperature = check_float("temperature", temperature, minimum=0, strict=True)
        sinkhorn_iterations = check_int(
            "sinkhorn_iterations", sinkhorn_iterations, minimum=0
        )
        check_distributed_available("gather_distributed", gather_distributed)
        if me_max_weight is not None:
            warnings.warn(
                "me_max_weight is deprecated, use regularization_weight instead "
                "(me_max_weight takes precedence while it is given).",
                _MeMaxWeightDeprecation,
                stacklevel=2,
            )
            regularization_weight = me_max_weight
        if not regularization_weight >= 0:
            raise ValueError(
                f"regularization_weight must be >= 0, got {regularization_weight!r}."
            )
        if isinstance(target_distribution, str):
            if target_distribution not in ("uniform", "power_law"):
                raise ValueError(
                    "target_distribution must be 'uniform', 'power_law' or a "
                    f"callable, got {target_distribution!r}."
                )
        elif not callable(target_distribution):
            raise ValueError(
                "target_distribution must be 'uniform', 'power_law' or a callable, "
                f"got {type(target_distribution).__name__}."
            )
        self.temperature = temperature
        self.sinkhorn_iterations = sinkhorn_iterations
        self.regularization_weight = regularization_weight
        self.gather_distributed = gather_distributed
        self.target_distribution = target_distribution
        self.power_law_exponent = power_law_exponent

    def forward(
        self,
        anchors: torch.Tensor,
        targets: torch.Tensor,
        prototypes: torch.Tensor,
        target_sharpen_temperature: float = 0.25,
    ) -> torch.Tensor:
        """Compute the MSN loss.

        Args:
            anchors: ``[B * V, D]`` anchor embeddings (``V`` views per image).
            targets: ``[B, D]`` target embeddings (no gradient flows into them).
            prototypes: ``[K, D]``.
            target_sharpen_temperature: Sharpening temperature of the targets (> 0).

        Returns:
            Scalar: mean cross entropy over all anchors plus the weighted regulariser.
        """
        _check_shapes(anchors, targets, prototypes)
        target_sharpen_temperature = check_float(
            "target_sharpen_temperature",
            target_sharpen_temperature,
            minimum=0,
            strict=True,
        )
        num_views = anchors.shape[0] // targets.shape[0]
        with autocast_disabled(anchors):
            anchors = F.normalize(at_least_float32(anchors), dim=1)
            targets = F.normalize(at_least_float32(targets), dim=1)
            prototypes = F.normalize(at_least_float32(prototypes), dim=1)
            anchor_log_probs = F.log_softmax(
                anchors @ prototypes.T / self.temperature, dim=1
            )
            with torch.no_grad():
                target_log_probs = F.log_softmax(
                    targets @ prototypes.T / self.temperature, dim=1
                )
                # sharpen(p, T) = softmax(log p / T), kept in log space
                target_log_probs = F.log_softmax(
                    target_log_probs / target_sharpen_temperature, dim=1
                )
                if self.sinkhorn_iterations > 0:
                    target_log_probs = sinkhorn_log(
                        target_log_probs,
                        self.sinkhorn_iterations,
                        self.gather_distributed,
                    )
                target_probs = target_log_probs.exp().repeat(num_views, 1)
            loss = -(target_probs * anchor_log_probs).sum(dim=1).mean()
            if self.regularization_weight > 0:
                # log of the mean anchor probabilities, without underflow
                log_mean = torch.logsumexp(anchor_log_probs, dim=0) - math.log(
                    anchor_log_probs.shape[0]
                )
                loss = loss + self.regularization_weight * self._regularization(
                    log_mean
                )
        return loss

    def regularization_loss(self, mean_anchor_probs: torch.Tensor) -> torch.Tensor:
        """Regulariser ``R`` of the mean anchor probabilities.

        Args:
            mean_anchor_probs: ``[K]`` mean of the anchor probabilities.

        Returns:
            Scalar: ``sum(p log p) + log K`` for ``"uniform"``, otherwise
            ``KL(target || p)`` with the power-law or custom target.
        """
        return self._regularization(mean_anchor_probs.log())

    def _regularization(self, log_mean: torch.Tensor) -> torch.Tensor:
        mean = log_mean.exp()
        if isinstance(self.target_distribution, str):
            if self.target_distribution == "uniform":
                # -entropy + log K, written with log p (finite even if p underflows)
                # (0 log 0 = 0, for means that are exactly zero)
                plogp = torch.where(mean > 0, mean * log_mean, torch.zeros_like(mean))
                return plogp.sum() + math.log(mean.shape[0])
            target = power_law_distribution(
                mean.shape[0], self.power_law_exponent, mean.device, mean.dtype
            )
        else:
            target = self.target_distribution(mean)
            if target.shape != mean.shape:
                raise ValueError(
                    "target_distribution must return a tensor of shape "
                    f"{tuple(mean.shape)}, got {tuple(target.shape)}."
                )
        target = target.to(mean.dtype)
        cross = torch.where(target > 0, target * log_mean, torch.zeros_like(target))
        return (torch.xlogy(target, target) - cross).sum()


def _check_shapes(
    anchors: torch.Tensor, targets: torch.Tensor, prototypes: torch.Tensor
) -> None:
    for name, tensor in (
        ("anchors", anchors),
        ("targets", targets),
        ("prototypes", prototypes),
    ):
        if tensor.dim() != 2:
            raise ValueError(f"{name} must be 2-D, got shape {tuple(tensor.shape)}.")
    dim = prototypes.shape[1]
    if anchors.shape[1] != dim or targets.shape[1] != dim:
        raise ValueError(
            "anchors, targets and prototypes must share the feature dimension, got "
            f"{anchors.shape[1]}, {targets.shape[1]} and {dim}."
        )
    if targets.shape[0] == 0 or anchors.shape[0] % targets.shape[0] != 0:
        raise ValueError(
            f"anchors must have a multiple of targets' {targets.shape[0]} rows "
            f"(batch_size * anchor_views), got {anchors.shape[0]}."
        )
