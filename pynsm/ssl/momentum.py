"""Momentum (exponential moving average) helpers for target networks, and schedules."""

from __future__ import annotations

import math

import torch
from torch import nn

from pynsm.losses._numerics import all_finite_on_host, warn_skipped
from pynsm.validation import check_int


@torch.no_grad()
def update_momentum(model: nn.Module, model_ema: nn.Module, m: float) -> None:
    """Move ``model_ema`` towards ``model``: ``θ_ema ← m · θ_ema + (1 − m) · θ``.

    Only parameters are averaged; buffers (e.g. batch-norm running statistics) of the
    EMA model keep being updated by its own forward passes. If a parameter of
    ``model`` holds a non-finite value (a diverged step), the target is left as it
    was, with a ``RuntimeWarning``: once averaged in, ``nan`` would never leave it.
    The check reads the parameters once more (a min/max pass) and, on an
    accelerator, costs one host sync per call (keeping the old target on the device
    instead would need a copy of every parameter); the training loop syncs on its
    loss each step anyway.

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
    online = [p.data for p in params]
    if not all_finite_on_host(online):
        warn_skipped("update_momentum target")
        return
    # lerp_ computes ema + (1 - m) * (p - ema) in one fused pass
    torch._foreach_lerp_([q.data for q in params_ema], online, 1 - m)


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


def warmup_cosine(step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to zero.

    ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps, then
    ``(1 + cos(π · p)) / 2`` with ``p = (step − warmup_steps) / (total_steps −
    warmup_steps)`` the progress through the rest (``0`` from ``total_steps`` on).
    Multiply a base learning rate by it, e.g. with
    ``torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, T,
    W))`` stepped once per batch. The warm-up keeps the first, large updates of a
    freshly initialised network from throwing its batch-norm statistics and
    prototypes far off; the decay lets the end of a short run settle.

    Args:
        step: Current step (0-based, ``>= 0``).
        total_steps: Number of steps of the whole run (``>= 1``).
        warmup_steps: Steps of linear warm-up, in ``[0, total_steps]``.

    Returns:
        The factor, in ``[0, 1]``.

    Example:
        >>> [round(warmup_cosine(s, 10, 2), 3) for s in range(11)]
        [0.5, 1.0, 1.0, 0.962, 0.854, 0.691, 0.5, 0.309, 0.146, 0.038, 0.0]
    """
    step = check_int("step", step, minimum=0)
    total_steps = check_int("total_steps", total_steps, minimum=1)
    warmup_steps = check_int(
        "warmup_steps", warmup_steps, minimum=0, maximum=total_steps
    )
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


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
