"""Momentum (exponential moving average) helpers for target networks."""

from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def update_momentum(model: nn.Module, model_ema: nn.Module, m: float) -> None:
    """Move ``model_ema`` towards ``model``: ``θ_ema ← m · θ_ema + (1 − m) · θ``.

    Only parameters are averaged; buffers (e.g. batch-norm running statistics) of the
    EMA model keep being updated by its own forward passes.

    Args:
        model: The online network (trained by the optimizer).
        model_ema: The target network; must have the same parameter shapes.
        m: Momentum in ``[0, 1]``; ``1`` leaves the target unchanged, ``0`` copies.

    Example:
        >>> online, target = nn.Linear(2, 2), nn.Linear(2, 2)
        >>> update_momentum(online, target, m=0.0)
        >>> torch.equal(online.weight, target.weight)
        True
    """
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"m (momentum) must be in [0, 1], got {m!r}")
    params = list(model.parameters())
    params_ema = list(model_ema.parameters())
    if len(params) != len(params_ema) or any(
        p.shape != q.shape for p, q in zip(params, params_ema)
    ):
        raise ValueError("model and model_ema must have parameters of the same shapes")
    # lerp_ computes ema + (1 - m) * (p - ema) in one fused pass
    torch._foreach_lerp_([q.data for q in params_ema], [p.data for p in params], 1 - m)


def cosine_schedule(
    step: int, max_steps: int, start_value: float, end_value: float
) -> float:
    """Cosine interpolation from ``start_value`` (step 0) to ``end_value`` (last step).

    ``value = end − (end − start) · (1 + cos(π · step / (max_steps − 1))) / 2``; steps
    past the end return ``end_value``. Used to raise the EMA momentum towards 1.

    Args:
        step: Current step (0-based).
        max_steps: Total number of steps.
        start_value: Value at step 0.
        end_value: Value at step ``max_steps - 1`` and after.

    Returns:
        The scheduled value.

    Example:
        >>> cosine_schedule(0, 10, 0.996, 1.0), cosine_schedule(9, 10, 0.996, 1.0)
        (0.996, 1.0)
    """
    if step < 0:
        raise ValueError(f"step must be non-negative, got {step}")
    if max_steps < 1:
        raise ValueError(f"max_steps must be positive, got {max_steps}")
    if max_steps == 1 or step >= max_steps - 1:
        return float(end_value)
    cos_factor = (1.0 + math.cos(math.pi * step / (max_steps - 1))) / 2.0
    return float(end_value - (end_value - start_value) * cos_factor)


def deactivate_requires_grad(model: nn.Module) -> None:
    """Stop gradients to every parameter of ``model`` (e.g. a momentum target network).

    Example:
        >>> net = nn.Linear(2, 2)
        >>> deactivate_requires_grad(net)
        >>> any(p.requires_grad for p in net.parameters())
        False
    """
    for param in model.parameters():
        param.requires_grad_(False)


def activate_requires_grad(model: nn.Module) -> None:
    """Let gradients flow to every parameter of ``model`` again.

    Example:
        >>> net = nn.Linear(2, 2)
        >>> deactivate_requires_grad(net); activate_requires_grad(net)
        >>> all(p.requires_grad for p in net.parameters())
        True
    """
    for param in model.parameters():
        param.requires_grad_(True)
