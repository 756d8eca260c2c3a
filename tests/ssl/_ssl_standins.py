"""Loss stand-ins used when pynsm.losses does not provide the real classes (yet).

They follow the documented contracts (seed 002): ``MSNLoss.forward(anchors, targets,
prototypes, target_sharpen_temperature)``, ``SwaVLoss.forward(high, low, queue)`` and
``MemoryBankModule(size).forward(output, update) -> (output, bank [dim, size])``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class StandInMSNLoss(nn.Module):
    def __init__(self, temperature=0.1, sinkhorn_iterations=3,
                 regularization_weight=1.0, target_distribution="uniform",
                 power_law_exponent=0.25, **_):
        super().__init__()
        self.temperature = temperature
        self.sinkhorn_iterations = sinkhorn_iterations
        self.regularization_weight = regularization_weight
        self.target_distribution = target_distribution
        self.power_law_exponent = power_law_exponent

    def forward(self, anchors, targets, prototypes, target_sharpen_temperature=0.25):
        num_views = anchors.shape[0] // targets.shape[0]
        anchors = nn.functional.normalize(anchors, dim=1)
        targets = nn.functional.normalize(targets, dim=1)
        prototypes = nn.functional.normalize(prototypes, dim=1)
        log_anchor = (anchors @ prototypes.T / self.temperature).log_softmax(dim=1)
        with torch.no_grad():
            logits = targets @ prototypes.T / self.temperature
            probs = (logits / target_sharpen_temperature).softmax(dim=1)
            probs = probs.T / probs.sum()
            rows, cols = probs.shape  # prototypes, targets
            for _ in range(self.sinkhorn_iterations):
                probs = probs / probs.sum(dim=1, keepdim=True) / rows
                probs = probs / probs.sum(dim=0, keepdim=True) / cols
            probs = (probs * cols).T.repeat(num_views, 1)
        loss = -(probs * log_anchor).sum(dim=1).mean()
        mean_probs = log_anchor.exp().mean(dim=0)
        if self.target_distribution == "uniform":
            reg = (mean_probs * mean_probs.log()).sum()
        else:
            ranks = torch.arange(1, mean_probs.numel() + 1, dtype=mean_probs.dtype)
            prior = ranks ** -self.power_law_exponent
            prior = prior / prior.sum()
            reg = (prior * (prior.log() - mean_probs.log())).sum()
        return loss + self.regularization_weight * reg


def _swav_codes(scores: Tensor, iterations: int, epsilon: float) -> Tensor:
    q = (scores / epsilon).exp().T
    q = q / q.sum()
    k, b = q.shape
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).T


class StandInSwaVLoss(nn.Module):
    def __init__(self, temperature=0.1, sinkhorn_iterations=3, sinkhorn_epsilon=0.05,
                 **_):
        super().__init__()
        self.temperature = temperature
        self.iterations = sinkhorn_iterations
        self.epsilon = sinkhorn_epsilon

    def forward(self, high, low, queue=None):
        n_crops = len(high) + len(low)
        total = 0.0
        for i, target in enumerate(high):
            with torch.no_grad():
                scores = target.detach()
                if queue is not None:
                    scores = torch.cat([scores, queue[i].detach()])
                codes = _swav_codes(scores, self.iterations, self.epsilon)
                codes = codes[: target.shape[0]]
            sub = 0.0
            for v, z in enumerate(list(high) + list(low)):
                if v != i:
                    log_p = (z / self.temperature).log_softmax(1)
                    sub = sub - (codes * log_p).sum(1).mean()
            total = total + sub / (n_crops - 1)
        return total / len(high)


class StandInMemoryBank(nn.Module):
    """FIFO bank [dim, size], lazily created with random unit columns."""

    def __init__(self, size=65536):
        super().__init__()
        self.size = size
        self.bank = None
        self.ptr = 0

    @torch.no_grad()
    def forward(self, output, labels=None, update=False):
        if self.bank is None:
            self.bank = nn.functional.normalize(
                torch.randn(output.shape[1], self.size), dim=0)
        bank = self.bank.clone()
        if update:
            for row in output.detach():
                self.bank[:, self.ptr] = row
                self.ptr = (self.ptr + 1) % self.size
        return output, bank


def msn_criterion(**kwargs):
    """The real ``pynsm.losses.msn.MSNLoss`` when it exists, else the stand-in."""
    try:
        from pynsm.losses.msn import MSNLoss
    except ImportError:
        return StandInMSNLoss(**kwargs)
    if kwargs.get("target_distribution", "uniform") == "uniform":
        kwargs.pop("target_distribution", None)
        kwargs.pop("power_law_exponent", None)
    return MSNLoss(**kwargs)


def swav_criterion(**kwargs):
    """The real ``pynsm.losses.swav.SwaVLoss`` when it exists, else the stand-in."""
    try:
        from pynsm.losses.swav import SwaVLoss
    except ImportError:
        return StandInSwaVLoss(**kwargs)
    return SwaVLoss(**kwargs)
