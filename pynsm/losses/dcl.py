"""Decoupled contrastive learning (DCL) and its weighted variant (DCLW)."""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn

from pynsm import distributed
from pynsm.losses._numerics import check_pair
from pynsm.losses.ntx_ent import _log_normaliser, _shifted_logits

WeightFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def negative_mises_fisher_weights(
    out0: torch.Tensor, out1: torch.Tensor, sigma: float = 0.5
) -> torch.Tensor:
    """DCLW weights ``w_i = 2 - B * softmax_i(<out0_i, out1_i> / sigma)``.

    The weighting of Yeh et al. 2021, eq. 7 (a von Mises-Fisher kernel normalised
    over the batch): pairs whose views already agree get less weight. Computed
    without gradient, as a weight.

    Args:
        out0: ``[B, D]`` normalised embeddings of the first views.
        out1: ``[B, D]`` normalised embeddings of the second views.
        sigma: Scale of the similarities (inverse temperature of the weighting).

    Returns:
        ``[B]`` weights with mean 1.

    Example:
        >>> import torch
        >>> from pynsm.losses import negative_mises_fisher_weights
        >>> w = negative_mises_fisher_weights(torch.eye(4), torch.eye(4))
        >>> w.tolist()
        [1.0, 1.0, 1.0, 1.0]
    """
    similarity = (out0.detach() * out1.detach()).sum(dim=1) / sigma
    return 2 - out0.shape[0] * F.softmax(similarity, dim=0)


def dcl_loss(
    out0: torch.Tensor,
    out1: torch.Tensor,
    temperature: float = 0.1,
    weight_fn: WeightFn | None = None,
    gather_distributed: bool = False,
) -> torch.Tensor:
    """Decoupled contrastive loss (Yeh et al. 2021, eq. 6), symmetric in the views.

    With normalised embeddings ``u = out0, v = out1`` and ``s(a, b) = <a, b> / t``,
    the term of image ``i`` and view ``u`` is::

        -w_i s(u_i, v_i) + log sum_{j != i} [exp s(u_i, u_j) + exp s(u_i, v_j)]

    i.e. the NT-Xent denominator without the positive pair (the "decoupling"):
    one log-sum-exp over the ``2B - 2`` (or ``2M - 2`` when gathered) negatives of
    both views, as in eq. 6. The loss is the mean over all images ``i`` and both
    views. ``w_i = 1`` unless
    ``weight_fn(out0, out1)`` (called on the normalised local embeddings, once with
    the views swapped) gives weights. With ``gather_distributed`` the sums over
    ``j`` run over the embeddings of all processes. The two views are treated by
    identical computations, so swapping ``out0`` and ``out1`` gives the bitwise
    same value.

    Args:
        out0: ``[B, D]`` embeddings of the first views.
        out1: ``[B, D]`` embeddings of the second views.
        temperature: Similarities are divided by it.
        weight_fn: Optional ``(out0, out1) -> [B]`` weights of the positive term.
        gather_distributed: Use the embeddings of all processes as negatives.

    Returns:
        Scalar loss.

    Example:
        >>> import torch
        >>> from pynsm.losses import dcl_loss
        >>> z = torch.randn(8, 16)
        >>> bool(dcl_loss(z, z) < dcl_loss(z, torch.randn(8, 16)))
        True
    """
    check_pair("out0", out0, "out1", out1)
    batch_size = out0.shape[0]
    views = F.normalize(torch.cat([out0, out1]), dim=1)
    out0, out1 = views.split(batch_size)
    if gather_distributed and distributed.world_size() > 1:
        all0, all1 = distributed.gather(out0), distributed.gather(out1)
        offset = distributed.rank() * batch_size
    else:
        all0, all1, offset = out0, out1, 0
    total = all0.shape[0]
    if total < 2:
        raise ValueError("DCL needs at least 2 images in the (gathered) batch")
    # Each view's rows are scored against [own view | other view] columns with a
    # product of its own: swapping out0 and out1 then swaps two identical
    # computations, so the loss is bitwise symmetric (one [2B, 2M] product with a
    # fixed column order would sum the two halves in a different order).
    own = torch.arange(batch_size, device=out0.device) + offset
    rows = torch.arange(batch_size, device=out0.device)
    # drop the sample itself and its positive from the denominator
    excluded = (rows.repeat(2), torch.cat([own, own + total]))
    positive = (out0 * out1).sum(dim=1) / temperature
    positive0 = positive1 = positive
    if weight_fn is not None:
        positive0 = positive * weight_fn(out0, out1)
        positive1 = positive * weight_fn(out1, out0)
    term0 = _view_terms(out0, all0, all1, positive0, temperature, excluded)
    term1 = _view_terms(out1, all1, all0, positive1, temperature, excluded)
    # a + b == b + a exactly: the mean over both views is symmetric
    return (term0.mean() + term1.mean()) / 2


def _view_terms(
    query: torch.Tensor,
    same: torch.Tensor,
    other: torch.Tensor,
    positive: torch.Tensor,
    temperature: float,
    excluded: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """``log sum_{j != i} [e^{s(q_i, same_j)} + e^{s(q_i, other_j)}] - positive_i``."""
    columns = torch.cat([same, other])
    shifted, shift = _shifted_logits(
        query / temperature, columns.T, abs(1 / temperature), excluded
    )
    negative = _log_normaliser(shifted, shift)
    return negative - positive.to(negative.dtype)


def _check(temperature: float, gather_distributed: bool) -> None:
    if abs(temperature) < 1e-8:
        raise ValueError(f"Illegal temperature: abs({temperature}) < 1e-8")
    if gather_distributed and not torch_dist.is_available():
        raise ValueError(
            "gather_distributed is True but torch.distributed is not available"
        )


class DCLLoss(nn.Module):
    """Decoupled Contrastive Learning loss (Yeh et al. 2021).

    Implements eq. 6 of https://arxiv.org/abs/2110.06848 including the sum over all
    images ``i`` and views ``k``; the loss is reduced to the mean over the
    mini-batch (all images and both views). See :func:`dcl_loss`.

    Args:
        temperature: Similarities are scaled by inverse temperature.
        weight_fn: Weighting function ``w`` of the paper: scales the loss between
            the positive views. Takes the two (normalised) inputs of ``forward`` and
            returns a ``[B]`` weight tensor. ``None`` means no weighting.
        gather_distributed: If ``True``, negatives from all processes are gathered
            before the loss calculation.

    Raises:
        ValueError: if ``abs(temperature) < 1e-8`` or ``gather_distributed`` is set
            without :mod:`torch.distributed`.

    Shapes:
        ``out0``, ``out1``: ``[B, D]``; returns a scalar.

    Example:
        >>> import torch
        >>> from pynsm.losses import DCLLoss
        >>> loss_fn = DCLLoss(temperature=0.07)
        >>> loss = loss_fn(torch.randn(8, 32), torch.randn(8, 32))
        >>> weight_fn = lambda out0, out1: torch.sum((out0 - out1) ** 2, dim=1)
        >>> weighted_fn = DCLLoss(weight_fn=weight_fn)
        >>> weighted = weighted_fn(torch.randn(8, 32), torch.randn(8, 32))
    """

    def __init__(
        self,
        temperature: float = 0.1,
        weight_fn: WeightFn | None = None,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        _check(temperature, gather_distributed)
        if weight_fn is not None and not callable(weight_fn):
            raise ValueError("weight_fn must be callable or None")
        self.temperature = temperature
        self.weight_fn = weight_fn
        self.gather_distributed = gather_distributed

    def forward(self, out0: torch.Tensor, out1: torch.Tensor) -> torch.Tensor:
        """Forward pass of the DCL loss.

        Args:
            out0: ``[B, D]`` projections of the first set of transformed images.
            out1: ``[B, D]`` projections of the second set of transformed images.

        Returns:
            Mean loss over the mini-batch.
        """
        return dcl_loss(
            out0, out1, self.temperature, self.weight_fn, self.gather_distributed
        )


class DCLWLoss(DCLLoss):
    """Weighted Decoupled Contrastive Learning loss (DCLW, Yeh et al. 2021).

    :class:`DCLLoss` with the negative von Mises-Fisher weighting
    :func:`negative_mises_fisher_weights` (eq. 6 with ``w`` of eq. 7). The loss is
    the mean over all images and views in the mini-batch.

    Args:
        temperature: Similarities are scaled by inverse temperature.
        sigma: Like the temperature, but for the weighting function.
        gather_distributed: If ``True``, negatives from all processes are gathered
            before the loss calculation (the weights use the local batch).

    Raises:
        ValueError: if ``abs(temperature) < 1e-8`` or ``abs(sigma) < 1e-8``, or
            ``gather_distributed`` is set without :mod:`torch.distributed`.

    Example:
        >>> import torch
        >>> from pynsm.losses import DCLWLoss
        >>> loss_fn = DCLWLoss(temperature=0.07)
        >>> loss_fn(torch.randn(8, 32), torch.randn(8, 32)).shape
        torch.Size([])
    """

    def __init__(
        self,
        temperature: float = 0.1,
        sigma: float = 0.5,
        gather_distributed: bool = False,
    ) -> None:
        if abs(sigma) < 1e-8:
            raise ValueError(f"Illegal sigma: abs({sigma}) < 1e-8")
        super().__init__(
            temperature=temperature,
            weight_fn=partial(negative_mises_fisher_weights, sigma=sigma),
            gather_distributed=gather_distributed,
        )
        self.sigma = sigma
