"""CO2: consistency regularisation of contrastive similarity distributions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from pynsm.losses._numerics import check_pair
from pynsm.losses.memory_bank import MemoryBankModule


def _log_pseudo_labels(
    query: torch.Tensor,
    key: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """``log_softmax([<q, k>, <q, negatives>] / t)`` per row, ``[B, 1 + K]``."""
    positive = (query * key).sum(dim=1, keepdim=True)
    negative = query @ negatives.to(query.dtype)
    return F.log_softmax(torch.cat([positive, negative], dim=1) / temperature, dim=1)


class CO2Regularizer(MemoryBankModule):
    """CO2 consistency regulariser (Wei et al. 2021, https://arxiv.org/abs/2010.02217).

    For normalised views ``out0, out1`` let ``P`` be the softmax (temperature
    ``t_consistency``) of the similarities of ``out0[i]`` to its positive
    ``out1[i]`` and to the negatives, and ``Q`` the same for ``out1[i]`` against
    ``out0[i]`` and the same negatives. The regulariser is the symmetric
    Kullback-Leibler divergence ``alpha * (KL(P||Q) + KL(Q||P)) / 2``, each KL
    averaged over the batch. The negatives are the entries of a FIFO memory bank
    of ``out1`` (updated on every call) when ``memory_bank_size > 0``, otherwise
    the other samples of the second batch.

    Args:
        alpha: Weight of the regularisation term.
        t_consistency: Temperature of the softmax.
        memory_bank_size: Number of negatives in the memory bank, or
            ``(length, dim)`` to allocate it at construction (see
            :class:`~pynsm.losses.MemoryBankModule`); ``0`` uses the second batch
            as negatives.

    Raises:
        ValueError: if ``abs(t_consistency) < 1e-8`` or ``memory_bank_size`` is
            negative; in ``forward`` for shapes that differ.

    Shapes:
        ``out0``, ``out1``: ``[B, D]``; returns a scalar.

    Example:
        >>> import torch
        >>> from pynsm.losses import CO2Regularizer, NTXentLoss
        >>> loss_fn = NTXentLoss(memory_bank_size=(64, 16))
        >>> co2 = CO2Regularizer(alpha=1.0, memory_bank_size=(64, 16))
        >>> out0, out1 = torch.randn(8, 16), torch.randn(8, 16)
        >>> loss = loss_fn(out0, out1) + co2(out0, out1)
        >>> loss.shape
        torch.Size([])
    """

    def __init__(
        self,
        alpha: float = 1,
        t_consistency: float = 0.05,
        memory_bank_size: int | Sequence[int] = 0,
    ) -> None:
        super().__init__(size=memory_bank_size)
        if abs(t_consistency) < 1e-8:
            raise ValueError(f"Illegal t_consistency: abs({t_consistency}) < 1e-8")
        self.alpha = alpha
        self.t_consistency = t_consistency

    def forward(self, out0: torch.Tensor, out1: torch.Tensor) -> torch.Tensor:
        """Computes the CO2 regularisation term for two model outputs.

        Args:
            out0: ``[B, D]`` projections of the first set of transformed images.
            out1: ``[B, D]`` projections of the second set of transformed images.

        Returns:
            The regularisation term multiplied by the weight factor ``alpha``.
        """
        check_pair("out0", out0, "out1", out1)
        out0 = F.normalize(out0, dim=1)
        out1 = F.normalize(out1, dim=1)
        _, negatives = super().forward(out1, update=True)
        if negatives is None:
            # the positive and the in-batch negatives of out0[i] are row i of
            # out0 @ out1.T (the positive on the diagonal), those of out1[i] are
            # row i of its transpose: entries pair up as in the [positive,
            # negatives] layout, so the KL sums agree, with one product
            similarities = (out0 @ out1.T) / self.t_consistency
            log_p = F.log_softmax(similarities, dim=1)
            log_q = F.log_softmax(similarities.T, dim=1)
        else:
            log_p = _log_pseudo_labels(out0, out1, negatives, self.t_consistency)
            log_q = _log_pseudo_labels(out1, out0, negatives, self.t_consistency)
        # KL(P||Q) + KL(Q||P) = sum (p - q)(log p - log q)
        symmetric_kl = ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(dim=1)
        return self.alpha * 0.5 * symmetric_kl.mean()
