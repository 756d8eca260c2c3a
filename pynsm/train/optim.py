"""Optimizer and scheduler construction: one for the Trainer and Lightning."""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any, Callable, Union

import torch
from torch import nn

from pynsm.validation import check_float

__all__ = ["OptimizerSpec", "SchedulerSpec", "build_optimizer", "build_scheduler"]

OptimizerSpec = Union[
    torch.optim.Optimizer,
    type,
    Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
]
SchedulerSpec = Union[Any, Callable[[torch.optim.Optimizer], Any]]

#: Learning rate of the default optimizer (SGD) when no ``lr`` is given.
DEFAULT_LR = 0.01


def build_optimizer(
    spec: OptimizerSpec | None, module: nn.Module, lr: float | None = None
) -> torch.optim.Optimizer:
    """An optimizer over the trainable parameters of ``module``.

    Args:
        spec: ``None`` (SGD), an optimizer instance (returned as is), an optimizer
            class (called with the parameters, and ``lr=lr`` when given) or a
            callable ``params -> optimizer``.
        module: The module whose parameters with ``requires_grad`` are optimised.
        lr: Learning rate for ``None`` (default 0.01) or an optimizer class;
            finite and > 0. Ignored for instances and other callables.

    Raises:
        TypeError: ``spec`` is none of the above, or the callable returns no
            optimizer.
        ValueError: ``lr`` is not finite or not > 0.

    Example:
        >>> import torch
        >>> opt = build_optimizer(torch.optim.AdamW, torch.nn.Linear(2, 2), lr=1e-3)
        >>> type(opt).__name__, opt.param_groups[0]["lr"]
        ('AdamW', 0.001)
    """
    if lr is not None:
        lr = check_float("lr", lr, minimum=0.0, strict=True)
    params = [p for p in module.parameters() if p.requires_grad]
    if spec is None:
        return torch.optim.SGD(params, lr=DEFAULT_LR if lr is None else lr)
    if isinstance(spec, torch.optim.Optimizer):
        return spec
    if inspect.isclass(spec):
        if not issubclass(spec, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer class must subclass torch.optim.Optimizer, got {spec!r}"
            )
        return spec(params) if lr is None else spec(params, lr=lr)
    if callable(spec):
        optimizer = spec(params)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                "optimizer callable must return a torch.optim.Optimizer, got "
                f"{type(optimizer).__name__}"
            )
        return optimizer
    raise TypeError(
        "optimizer must be a torch.optim.Optimizer, an optimizer class or a callable "
        f"params -> optimizer, got {type(spec).__name__}"
    )


def build_scheduler(
    spec: SchedulerSpec | None, optimizer: torch.optim.Optimizer
) -> Any:
    """A scheduler instance (returned as is) or ``spec(optimizer)`` for a callable.

    Raises:
        TypeError: the result has no ``step``/``state_dict``/``load_state_dict``.
    """
    if spec is None:
        return None
    is_instance = hasattr(spec, "state_dict") and hasattr(spec, "step")
    scheduler = spec if is_instance or not callable(spec) else spec(optimizer)
    for name in ("step", "state_dict", "load_state_dict"):
        if not callable(getattr(scheduler, name, None)):
            raise TypeError(
                f"scheduler must have a {name}() method, got {type(scheduler).__name__}"
            )
    return scheduler
