"""The SwaV loss: swapped prediction of Sinkhorn codes between crops."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pynsm.losses._numerics import (
    at_least_float32,
    autocast_disabled,
    check_distributed_available,
)
from pynsm.losses.sinkhorn import sinkhorn_swav
from pynsm.validation import check_float, check_int

__all__ = ["SwaVLoss"]


class SwaVLoss(nn.Module):
    """Swapping assignments between views (SwaV).

    Caron et al., *Unsupervised Learning of Visual Features by Contrasting Cluster
    Assignments*, 2020, https://arxiv.org/abs/2006.09882.

    For every high-resolution crop ``i`` the codes ``q_i`` are computed without
    gradient by Sinkhorn-Knopp on its prototype scores (optionally with the scores of
    a queue of past batches appended, whose codes are then dropped). Every *other*
    crop ``v`` (high- and low-resolution) predicts them:
    ``subloss(z_v, q_i) = -mean_b sum_k q_ibk log softmax(z_vb / temperature)_k``.
    The loss is ``mean_i [ sum_{v != i} subloss(z_v, q_i) / (n_crops - 1) ]``.

    Codes are computed in log space and the cross entropy with ``log_softmax`` in
    float32 at least (outside autocast), so ``sinkhorn_epsilon=0.01``, unnormalised
    scores and bf16 inputs stay finite.

    Args:
        temperature: Temperature of the cross entropy; in ``(0, inf)``.
        sinkhorn_iterations: Sinkhorn iterations (>= 0).
        sinkhorn_epsilon: Entropic regularisation of Sinkhorn; in ``(0, inf)``.
        sinkhorn_gather_distributed: Compute the codes over the samples of all
            processes (the result equals one process holding the whole batch).

    Shapes:
        Each of ``high_resolution_outputs`` / ``low_resolution_outputs`` /
        ``queue_outputs``: ``[B, K]`` (queue entries ``[Q, K]``) → scalar.

    Example:
        >>> import torch
        >>> from pynsm.losses import SwaVLoss
        >>> loss_fn = SwaVLoss()
        >>> high = [torch.randn(8, 30, requires_grad=True) for _ in range(2)]
        >>> low = [torch.randn(8, 30, requires_grad=True) for _ in range(4)]
        >>> loss = loss_fn(high, low)
        >>> loss.backward()
        >>> loss.shape
        torch.Size([])
    """

    def __init__(
        self,
        temperature: float = 0.1,
        sinkhorn_iterations: int = 3,
        sinkhorn_epsilon: float = 0.05,
        sinkhorn_gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        temperature = check_float("temperature", temperature, minimum=0, strict=True)
        sinkhorn_iterations = check_int(
            "sinkhorn_iterations", sinkhorn_iterations, minimum=0
        )
        sinkhorn_epsilon = check_float(
            "sinkhorn_epsilon", sinkhorn_epsilon, minimum=0, strict=True
        )
        check_distributed_available(
            "sinkhorn_gather_distributed", sinkhorn_gather_distributed
        )
        self.temperature = temperature
        self.sinkhorn_iterations = sinkhorn_iterations
        self.sinkhorn_epsilon = sinkhorn_epsilon
        self.sinkhorn_gather_distributed = sinkhorn_gather_distributed

    def subloss(self, z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Cross entropy of the prediction ``softmax(z / temperature)`` and codes ``q``.

        Args:
            z: ``[B, K]`` similarities of features and prototypes.
            q: ``[B, K]`` codes from Sinkhorn iterations.

        Returns:
            Scalar ``-mean_b sum_k q_bk log softmax(z_b / temperature)_k``.
        """
        if z.shape != q.shape:
            raise ValueError(
                f"z and q must have the same shape, got {tuple(z.shape)} and "
                f"{tuple(q.shape)}."
            )
        with autocast_disabled(z):
            log_p = F.log_softmax(at_least_float32(z) / self.temperature, dim=1)
            return -(at_least_float32(q) * log_p).sum(dim=1).mean()

    @torch.no_grad()
    def _codes(self, scores: torch.Tensor, queue: torch.Tensor | None) -> torch.Tensor:
        """Sinkhorn codes of one crop's scores (queue rows appended, then dropped)."""
        outputs = at_least_float32(scores.detach())
        if queue is not None:
            outputs = torch.cat((outputs, queue.detach().to(outputs.dtype)))
        codes = sinkhorn_swav(
            outputs,
            iterations=self.sinkhorn_iterations,
            epsilon=self.sinkhorn_epsilon,
            gather_distributed=self.sinkhorn_gather_distributed,
        )
        return codes[: scores.shape[0]]

    def forward(
        self,
        high_resolution_outputs: list[torch.Tensor],
        low_resolution_outputs: list[torch.Tensor],
        queue_outputs: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Compute the SwaV loss.

        Args:
            high_resolution_outputs: Scores ``[B, K]`` of the high-resolution crops
                (codes are computed for these).
            low_resolution_outputs: Scores ``[B, K]`` of the low-resolution crops.
            queue_outputs: Optional scores ``[Q, K]`` of past high-resolution crops,
                one per high-resolution crop, appended before Sinkhorn.

        Returns:
            Scalar SwaV loss (average over code crops of the per-crop mean subloss).
        """
        high, low = list(high_resolution_outputs), list(low_resolution_outputs)
        _check_crops(high, low, queue_outputs)
        n_crops = len(high) + len(low)
        with autocast_disabled(high[0]):
            # log_softmax once per crop rather than once per (code, crop) pair, and
            # sum_{v != i} q_i . log p_v = q_i . (sum over the other crops' log p_v)
            log_probs = [
                F.log_softmax(at_least_float32(z) / self.temperature, dim=1)
                for z in high + low
            ]
            low_sum = sum(log_probs[len(high) :], torch.zeros_like(log_probs[0]))
            loss = log_probs[0].new_zeros(())
            for i, scores in enumerate(high):
                codes = self._codes(
                    scores, None if queue_outputs is None else queue_outputs[i]
                )
                others = sum(
                    (log_probs[j] for j in range(len(high)) if j != i), low_sum
                )
                loss = loss - (codes * others).sum(dim=1).mean() / (n_crops - 1)
        return loss / len(high)


def _check_crops(
    high: list[torch.Tensor],
    low: list[torch.Tensor],
    queue: list[torch.Tensor] | None,
) -> None:
    if len(high) == 0:
        raise ValueError("high_resolution_outputs must contain at least one crop.")
    if len(high) + len(low) < 2:
        raise ValueError(
            "high_resolution_outputs and low_resolution_outputs must contain at least "
            "two crops in total (each crop predicts the codes of another)."
        )
    shape = high[0].shape
    if len(shape) != 2:
        raise ValueError(
            f"high_resolution_outputs must hold [B, K] tensors, got {tuple(shape)}."
        )
    for name, crops in (
        ("high_resolution_outputs", high),
        ("low_resolution_outputs", low),
    ):
        for crop in crops:
            if crop.shape != shape:
                raise ValueError(
                    f"every crop of {name} must have shape {tuple(shape)}, got "
                    f"{tuple(crop.shape)}."
                )
    if queue is not None:
        if len(queue) != len(high):
            raise ValueError(
                "queue_outputs must have one entry per high-resolution crop, got "
                f"{len(queue)} for {len(high)}."
            )
        for entry in queue:
            if entry.dim() != 2 or entry.shape[1] != shape[1]:
                raise ValueError(
                    f"queue_outputs entries must have shape [Q, {shape[1]}], got "
                    f"{tuple(entry.shape)}."
                )
