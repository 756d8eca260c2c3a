"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR and MoCo."""

from __future__ import annotations

from collections.abc import Sequence
from math import inf

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F

from pynsm import distributed
from pynsm.losses._numerics import check_pair
from pynsm.losses.memory_bank import MemoryBankModule


def _shifted_logits(
    query: torch.Tensor,
    keys: torch.Tensor,
    bound: float,
    excluded: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | float]:
    """``(query @ keys - shift, shift)`` for logits known to lie in ``[-bound, bound]``.

    Entries at the ``excluded`` ``(rows, columns)`` are set to ``-inf`` (absent from
    the log-sum-exp). The shift keeps ``exp`` in range: ``bound`` itself when the
    logits cannot span more than 80 below it (``bound <= 40``: no overflow and no
    underflow even in float32), folded into the product (``addmm``) so it costs no
    extra pass; else the maximum of each row's remaining entries (detached: a
    log-sum-exp does not depend on it). The result is at least float32 (under
    autocast the product comes out in bf16/fp16, too coarse for a log-sum-exp).
    """
    dtype = torch.promote_types(query.dtype, torch.float32)
    if bound <= 40:
        logits = torch.addmm(query.new_tensor(-bound), query, keys).to(dtype)
        shift: torch.Tensor | float = bound
    else:
        logits = (query @ keys).to(dtype)
    if excluded is not None:
        logits.index_put_(excluded, logits.new_tensor(-inf))
    if bound > 40:
        row_max = logits.detach().amax(dim=1, keepdim=True)
        logits = logits - row_max
        shift = row_max.squeeze(1)
    return logits, shift


def _log_normaliser(
    shifted_logits: torch.Tensor, shift: torch.Tensor | float
) -> torch.Tensor:
    """``log sum_j exp(logits_ij)`` per row from :func:`_shifted_logits` (consumes
    ``shifted_logits`` in place; ``-inf`` entries count as absent)."""
    return shifted_logits.exp_().sum(dim=1).log() + shift


def ntxent_loss(
    out0: torch.Tensor,
    out1: torch.Tensor,
    temperature: float = 0.5,
    negatives: torch.Tensor | None = None,
    gather_distributed: bool = False,
) -> torch.Tensor:
    """Contrastive cross-entropy between two views (SimCLR, or MoCo with negatives).

    Embeddings are L2-normalised and similarities divided by ``temperature``.
    Without ``negatives`` every one of the ``2B`` embeddings must pick out its other
    view among the other ``2B - 1`` embeddings (SimCLR, eq. 1); the loss is the mean
    cross-entropy over the ``2B`` rows. With ``negatives`` (a memory bank), each
    ``out0[i]`` must pick ``out1[i]`` among ``out1[i]`` and the bank entries (MoCo,
    eq. 1), averaged over the ``B`` rows. Computed with ``cross_entropy`` (log-sum-
    exp), so it stays finite and accurate at small temperatures.

    Args:
        out0: ``[B, D]`` embeddings of the first views.
        out1: ``[B, D]`` embeddings of the second views.
        temperature: Similarities are divided by it.
        negatives: Optional ``[D, K]`` negatives (memory-bank layout), assumed
            already normalised.
        gather_distributed: Compare against the embeddings of every process
            (without negatives only).

    Returns:
        Scalar loss.

    Example:
        >>> import torch
        >>> from pynsm.losses import ntxent_loss
        >>> z = torch.randn(8, 16)
        >>> bool(ntxent_loss(z, z) < ntxent_loss(z, torch.randn(8, 16)))
        True
    """
    check_pair("out0", out0, "out1", out1)
    batch_size = out0.shape[0]
    bound = 1 / abs(temperature)  # |cosine| <= 1: every logit lies in [-bound, bound]
    views = F.normalize(torch.cat([out0, out1]), dim=1)
    out0, out1 = views.split(batch_size)
    if negatives is not None:
        if negatives.ndim != 2 or negatives.shape[0] != out0.shape[1]:
            raise ValueError(
                f"negatives must have shape [dim={out0.shape[1]}, num_negatives], "
                f"got {tuple(negatives.shape)}"
            )
        # cross-entropy with the positive as class 0, without materialising the
        # [B, 1 + K] logits: log(e^pos + sum e^neg) - pos, all in log space
        query = out0 / temperature
        shifted, shift = _shifted_logits(query, negatives.to(query.dtype), bound)
        positive = (query * out1).sum(dim=1).to(shifted.dtype)
        log_normaliser = torch.logaddexp(positive, _log_normaliser(shifted, shift))
        return (log_normaliser - positive).mean()

    if gather_distributed and distributed.world_size() > 1:
        all0, all1 = distributed.gather(out0), distributed.gather(out1)
        columns = torch.cat([all0, all1])
        offset = distributed.rank() * batch_size
    else:
        columns, offset = views, 0
    total = columns.shape[0] // 2
    # one [2B, 2M] product instead of four blocks: rows are this process's views,
    # columns every view; row i's own column is masked out, its other view is the label
    own = torch.arange(batch_size, device=out0.device) + offset
    rows = torch.arange(2 * batch_size, device=out0.device)
    self_columns = torch.cat([own, own + total])
    shifted, shift = _shifted_logits(
        views / temperature, columns.T, bound, excluded=(rows, self_columns)
    )
    # cross-entropy with the other view as label; its logit computed directly
    positive = ((out0 * out1).sum(dim=1) / temperature).to(shifted.dtype).repeat(2)
    return (_log_normaliser(shifted, shift) - positive).mean()


class NTXentLoss(MemoryBankModule):
    """Normalised temperature-scaled cross-entropy (NT-Xent) of SimCLR / MoCo.

    Implements the contrastive loss of SimCLR (Chen et al. 2020,
    https://arxiv.org/abs/2002.05709): the other view of the same image is the
    positive, the other ``2B - 2`` embeddings of the batch the negatives. With
    ``memory_bank_size > 0`` it becomes the MoCo loss (He et al. 2020,
    https://arxiv.org/abs/1911.05722): the negatives are the entries of a FIFO
    memory bank of past ``out1`` embeddings, the batch itself is not used as
    negatives, and the bank is updated with ``out1`` whenever ``out0`` requires a
    gradient (so evaluation under ``torch.no_grad()`` leaves it untouched). See
    :func:`ntxent_loss` for the formula.

    Args:
        temperature: Scale logits by the inverse of the temperature.
        memory_bank_size: Number of negatives stored in the memory bank, or
            ``(length, dim)`` to allocate the bank at construction (see
            :class:`~pynsm.losses.MemoryBankModule`); ``0`` for SimCLR, typically
            4096 or 65536 for MoCo.
        gather_distributed: If ``True``, negatives from all processes are gathered
            (with gradients) before the loss is computed; with a memory bank, the
            keys of all processes are gathered before they are added to it.

    Raises:
        TypeError: if ``memory_bank_size`` is not an int or a sequence of ints.
        ValueError: if ``abs(temperature) < 1e-8`` (division by zero), if an entry
            of ``memory_bank_size`` is negative, or if ``gather_distributed`` is
            set but :mod:`torch.distributed` is not available.

    Shapes:
        ``out0``, ``out1``: ``[B, D]``; returns a scalar.

    Example:
        >>> import torch
        >>> from pynsm.losses import NTXentLoss
        >>> loss_fn = NTXentLoss(temperature=0.5)
        >>> out0, out1 = torch.randn(8, 32), torch.randn(8, 32)
        >>> loss_fn(out0, out1).shape
        torch.Size([])
        >>> moco = NTXentLoss(memory_bank_size=(64, 32))  # 64 negatives of dim 32
        >>> moco(out0.requires_grad_(), out1).ndim
        0
    """

    def __init__(
        self,
        temperature: float = 0.5,
        memory_bank_size: int | Sequence[int] = 0,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__(size=memory_bank_size, gather_distributed=gather_distributed)
        if abs(temperature) < 1e-8:
            raise ValueError(f"Illegal temperature: abs({temperature}) < 1e-8")
        if gather_distributed and not torch_dist.is_available():
            raise ValueError(
                "gather_distributed is True but torch.distributed is not available"
            )
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def forward(self, out0: torch.Tensor, out1: torch.Tensor) -> torch.Tensor:
        """Compute the loss for two batches of views.

        Args:
            out0: ``[B, D]`` projections of the first views.
            out1: ``[B, D]`` projections of the second views.

        Returns:
            Scalar contrastive cross-entropy.
        """
        check_pair("out0", out0, "out1", out1)
        negatives = None
        if self.size[0] > 0:
            # the bank stores normalised keys, so normalise before it sees out1
            keys = F.normalize(out1, dim=1)
            _, negatives = super().forward(keys, update=out0.requires_grad)
        return ntxent_loss(
            out0,
            out1,
            temperature=self.temperature,
            negatives=negatives,
            gather_distributed=self.gather_distributed,
        )
