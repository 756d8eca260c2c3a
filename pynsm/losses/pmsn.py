"""Prior Matching for Siamese Networks (PMSN): MSN with a non-uniform prior."""

from __future__ import annotations

from pynsm.losses.msn import MSNLoss, TargetDistribution

__all__ = ["PMSNCustomLoss", "PMSNLoss"]


class PMSNLoss(MSNLoss):
    """MSN loss whose regulariser matches a power-law prior over prototypes (PMSN).

    Assran et al., *The Hidden Uniform Cluster Prior in Self-Supervised Learning*,
    2022, https://arxiv.org/abs/2210.07277. Same as
    ``MSNLoss(target_distribution="power_law", power_law_exponent=...)``: the
    regulariser is ``KL(pi || mean anchor probabilities)`` with ``pi_k`` proportional
    to ``k ** -power_law_exponent``, ``k = 1..K``.

    Args:
        temperature: Similarities are divided by it; in ``(0, inf)``.
        sinkhorn_iterations: Sinkhorn iterations on the targets (>= 0).
        regularization_weight: Weight of the KL regulariser (0 disables).
        power_law_exponent: Exponent of the power-law prior.
        gather_distributed: Balance the Sinkhorn targets over all processes.

    Shapes:
        As :class:`MSNLoss`: ``anchors [B * V, D]``, ``targets [B, D]``,
        ``prototypes [K, D]`` → scalar.

    Example:
        >>> import torch
        >>> from pynsm.losses import PMSNLoss
        >>> loss_fn = PMSNLoss(power_law_exponent=0.25)
        >>> loss = loss_fn(torch.randn(8, 16), torch.randn(4, 16),
        ...                prototypes=torch.randn(10, 16))
        >>> bool(loss.isfinite())
        True
    """

    def __init__(
        self,
        temperature: float = 0.1,
        sinkhorn_iterations: int = 3,
        regularization_weight: float = 1,
        power_law_exponent: float = 0.25,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__(
            temperature=temperature,
            sinkhorn_iterations=sinkhorn_iterations,
            regularization_weight=regularization_weight,
            gather_distributed=gather_distributed,
            target_distribution="power_law",
            power_law_exponent=power_law_exponent,
        )


class PMSNCustomLoss(MSNLoss):
    """MSN loss whose regulariser matches a custom prior over prototypes (PMSN).

    Assran et al., 2022, https://arxiv.org/abs/2210.07277. Same as
    ``MSNLoss(target_distribution=target_distribution)``: the regulariser is
    ``KL(target_distribution(p) || p)`` with ``p`` the mean anchor probabilities.

    Args:
        target_distribution: Maps the mean anchor probabilities ``[K]`` to a
            distribution ``[K]`` summing to one.
        temperature: Similarities are divided by it; in ``(0, inf)``.
        sinkhorn_iterations: Sinkhorn iterations on the targets (>= 0).
        regularization_weight: Weight of the KL regulariser (0 disables).
        gather_distributed: Balance the Sinkhorn targets over all processes.

    Shapes:
        As :class:`MSNLoss`.

    Example:
        >>> import torch
        >>> from pynsm.losses import PMSNCustomLoss
        >>> def uniform(mean_probs):
        ...     return mean_probs.new_ones(mean_probs.shape[0]) / mean_probs.shape[0]
        >>> loss_fn = PMSNCustomLoss(target_distribution=uniform)
        >>> loss = loss_fn(torch.randn(8, 16), torch.randn(4, 16),
        ...                prototypes=torch.randn(10, 16))
        >>> bool(loss.isfinite())
        True
    """

    def __init__(
        self,
        target_distribution: TargetDistribution,
        temperature: float = 0.1,
        sinkhorn_iterations: int = 3,
        regularization_weight: float = 1,
        gather_distributed: bool = False,
    ) -> None:
        if isinstance(target_distribution, str) or not callable(target_distribution):
            raise ValueError(
                "target_distribution must be a callable mapping [K] mean anchor "
                f"probabilities to a [K] distribution, got {target_distribution!r}."
            )
        super().__init__(
            temperature=temperature,
            sinkhorn_iterations=sinkhorn_iterations,
            regularization_weight=regularization_weight,
            gather_distributed=gather_distributed,
            target_distribution=target_distribution,
        )
