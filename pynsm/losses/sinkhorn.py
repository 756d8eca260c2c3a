"""Sinkhorn-Knopp normalisation of soft cluster assignments, computed in log space.

Both MSN and SwaV turn a ``[B, K]`` matrix of sample-to-prototype scores into *codes*
whose prototypes are used equally often over the batch (each prototype gets mass
``B / K``) while every sample keeps a distribution over prototypes (each row sums to
one). The matrix is alternately rescaled along prototypes and along samples
(Cuturi, 2013, https://arxiv.org/abs/1306.0895).

Here every rescaling is a subtraction of a log-sum-exp, so scores divided by a small
``epsilon`` (SwaV) or probabilities that underflow (MSN at low temperatures) never
overflow to ``inf`` nor divide ``0 / 0``. With ``gather_distributed=True`` the sums over
samples run over the samples of every process (through
:func:`pynsm.distributed.all_reduce_sum`), so ``N`` processes holding ``B / N`` rows
each get exactly the rows that one process holding all ``B`` rows would get.
"""

from __future__ import annotations

import math

import torch

from pynsm import distributed
from pynsm.losses._numerics import at_least_float32
from pynsm.validation import check_int

__all__ = ["sinkhorn_log", "sinkhorn_msn", "sinkhorn_swav"]


def _logsumexp_over_samples(
    log_q: torch.Tensor, dim: int | tuple[int, ...], gather_distributed: bool
) -> torch.Tensor:
    """Log-sum-exp over ``dim`` (which includes the sample dim 0), across processes.

    Every process's partial log-sum-exp is shared through an all-reduce of a
    ``[world_size, ...]`` buffer where each rank fills only its own row, so the
    combination is itself a stable log-sum-exp (no global maximum is needed).
    """
    lse = torch.logsumexp(log_q, dim=dim, keepdim=True)
    world = distributed.world_size() if gather_distributed else 1
    if world > 1:
        parts = lse.new_zeros((world, *lse.shape))
        parts[distributed.rank()] = lse
        distributed.all_reduce_sum(parts)
        lse = torch.logsumexp(parts, dim=0)
    # A prototype with zero mass everywhere stays zero instead of becoming 0 / 0.
    return torch.where(torch.isneginf(lse), torch.zeros_like(lse), lse)


# Largest spread max - min of the (log) scores for which Sinkhorn may run on
# exp(scores - max): every entry, and every entry after the row and column
# rescalings (which divide by at most the matrix size), stays a normal number.
_LINEAR_RANGE = {torch.float32: 60.0, torch.float64: 600.0}


def _linear_shift(log_q: torch.Tensor, gather_distributed: bool) -> torch.Tensor | None:
    """The common shift (the global maximum) when the linear path is safe, else
    ``None``; the decision is the same on every process."""
    bound = _LINEAR_RANGE.get(log_q.dtype)
    if bound is None or log_q.numel() == 0:
        return None
    stats = torch.stack([log_q.amax(), -log_q.amin()])
    world = distributed.world_size() if gather_distributed else 1
    if world > 1:  # every process must take the same path (collectives follow)
        torch.distributed.all_reduce(stats, op=torch.distributed.ReduceOp.MAX)
    top, spread = stats[0], stats[0] + stats[1]
    if not bool(torch.isfinite(spread)) or float(spread) > bound:
        return None
    return top


def _sum_over_samples(
    q: torch.Tensor, dim: int | tuple[int, ...], gather_distributed: bool
) -> torch.Tensor:
    total = q.sum(dim=dim, keepdim=True)
    if gather_distributed and distributed.world_size() > 1:
        distributed.all_reduce_sum(total)
    return total


def _sinkhorn(
    log_scores: torch.Tensor, iterations: int, gather_distributed: bool, log: bool
) -> torch.Tensor:
    """Codes (``log=False``) or log-codes of :func:`sinkhorn_log`.

    When the spread of the scores allows (see ``_LINEAR_RANGE``), the iterations
    run on ``exp(scores - max)`` with plain sums: one ``exp`` instead of two
    log-sum-exps per iteration, same result up to rounding. Otherwise (very small
    temperatures, ``-inf`` scores) they run in log space.
    """
    log_q = at_least_float32(log_scores)
    shift = _linear_shift(log_q, gather_distributed)
    if shift is None:
        codes = _sinkhorn_log_space(log_q, iterations, gather_distributed)
        return codes if log else codes.exp()
    q = (log_q - shift).exp_()
    q /= _sum_over_samples(q, (0, 1), gather_distributed)
    if iterations == 0:
        world = distributed.world_size() if gather_distributed else 1
        q *= q.shape[0] * world
    for _ in range(iterations):
        q /= _sum_over_samples(q, 0, gather_distributed)
        q /= q.sum(dim=1, keepdim=True)
    return q.log_() if log else q


def _sinkhorn_log_space(
    log_q: torch.Tensor, iterations: int, gather_distributed: bool
) -> torch.Tensor:
    log_q = log_q - _logsumexp_over_samples(log_q, (0, 1), gather_distributed)
    if iterations == 0:
        world = distributed.world_size() if gather_distributed else 1
        return log_q + math.log(log_q.shape[0] * world)
    for _ in range(iterations):
        # Equal mass per prototype (the usual extra 1/K and 1/B factors cancel in the
        # next rescaling, and the final multiplication by B undoes the last one).
        log_q = log_q - _logsumexp_over_samples(log_q, 0, gather_distributed)
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True)
    return log_q


@torch.no_grad()
def sinkhorn_log(
    log_scores: torch.Tensor, iterations: int = 3, gather_distributed: bool = False
) -> torch.Tensor:
    """Sinkhorn-Knopp on ``exp(log_scores)``, returning log-codes.

    The matrix ``Q = exp(log_scores)`` is first scaled to total mass one; each
    iteration then divides every prototype column by its sum over all samples (of
    all processes when gathering) and every sample row by its sum over prototypes.
    After at least one iteration the rows of ``exp(result)`` sum to one; with
    ``iterations=0`` the result is ``log(B * Q / Q.sum())`` (``B`` counted over all
    processes when gathering).

    Args:
        log_scores: ``[B, K]`` unnormalised log-weights (any finite values, ``-inf``
            for zero weight).
        iterations: Number of Sinkhorn iterations (>= 0).
        gather_distributed: Normalise over the samples of every process of the
            default :mod:`torch.distributed` group.

    Returns:
        ``[B, K]`` log-codes, in float32 at least (float64 stays float64).

    Example:
        >>> import torch
        >>> from pynsm.losses.sinkhorn import sinkhorn_log
        >>> codes = sinkhorn_log(torch.randn(8, 4) * 100, iterations=3).exp()
        >>> torch.allclose(codes.sum(dim=1), torch.ones(8))
        True
    """
    iterations = check_int("iterations", iterations, minimum=0)
    if log_scores.dim() != 2:
        raise ValueError(
            f"log_scores must have shape [B, K], got {tuple(log_scores.shape)}."
        )
    return _sinkhorn(log_scores, iterations, gather_distributed, log=True)


@torch.no_grad()
def sinkhorn_msn(
    probabilities: torch.Tensor, iterations: int = 3, gather_distributed: bool = False
) -> torch.Tensor:
    """Sinkhorn normalisation of target probabilities, MSN flavour.

    As in Masked Siamese Networks (Assran et al., 2022,
    https://arxiv.org/abs/2204.07141): the (sharpened) target probabilities are
    balanced so that every prototype gets the same total mass over the batch; each
    row still sums to one. ``iterations=0`` returns the probabilities unchanged.

    Args:
        probabilities: ``[B, K]`` non-negative, each row a distribution.
        iterations: Number of Sinkhorn iterations (>= 0; 0 disables).
        gather_distributed: Balance over the samples of every process.

    Returns:
        ``[B, K]`` balanced probabilities (float32 at least).

    Example:
        >>> import torch
        >>> from pynsm.losses.sinkhorn import sinkhorn_msn
        >>> probs = torch.softmax(torch.randn(6, 3), dim=1)
        >>> codes = sinkhorn_msn(probs, iterations=50)
        >>> torch.allclose(codes.sum(dim=0), torch.full((3,), 2.0), atol=1e-4)
        True
    """
    iterations = check_int("iterations", iterations, minimum=0)
    if iterations == 0:
        return probabilities
    return sinkhorn_log(
        at_least_float32(probabilities).log(), iterations, gather_distributed
    ).exp()


@torch.no_grad()
def sinkhorn_swav(
    scores: torch.Tensor,
    iterations: int = 3,
    epsilon: float = 0.05,
    gather_distributed: bool = False,
) -> torch.Tensor:
    """Soft codes from prototype scores, SwaV flavour.

    As in SwaV (Caron et al., 2020, https://arxiv.org/abs/2006.09882, Sec. 3.1): the
    codes solve the entropy-regularised equipartition problem
    ``Q = diag(u) exp(scores / epsilon) diag(v)``, approximated by ``iterations``
    Sinkhorn steps. Computed as ``sinkhorn_log(scores / epsilon)``, so
    ``epsilon=0.01`` with unnormalised scores stays finite in float32.

    Args:
        scores: ``[B, K]`` similarities between features and prototypes.
        iterations: Number of Sinkhorn iterations (>= 0).
        epsilon: Entropic regularisation (> 0); smaller means harder codes.
        gather_distributed: Balance over the samples of every process.

    Returns:
        ``[B, K]`` codes; rows sum to one once ``iterations >= 1``.

    Example:
        >>> import torch
        >>> from pynsm.losses.sinkhorn import sinkhorn_swav
        >>> codes = sinkhorn_swav(torch.randn(8, 4) * 10, epsilon=0.01)
        >>> bool(torch.isfinite(codes).all())
        True
    """
    if not epsilon > 0:
        raise ValueError(f"epsilon must be in (0, inf), got {epsilon!r}.")
    iterations = check_int("iterations", iterations, minimum=0)
    if scores.dim() != 2:
        raise ValueError(f"scores must have shape [B, K], got {tuple(scores.shape)}.")
    return _sinkhorn(
        at_least_float32(scores) / epsilon, iterations, gather_distributed, log=False
    )
