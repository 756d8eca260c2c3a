"""Private numerics helpers shared by the losses.

The clustering losses exponentiate scores divided by small temperatures, so they are
computed in at least float32 and outside autocast: a bf16/fp16 ``exp`` or ``log``
there loses every significant digit (or overflows) long before float32 does.

Running statistics (DINO and iBOT centres, TiCo's covariance, whitening statistics,
memory banks, momentum targets) outlive the batch that fed them: one non-finite
batch folded in makes every later loss non-finite. :func:`update_if_finite` keeps
the old state instead.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """Return ``tensor`` upcast to float32 when it is half or bfloat16 (else as is)."""
    return tensor.float() if tensor.dtype in _LOW_PRECISION else tensor


@contextlib.contextmanager
def autocast_disabled(tensor: torch.Tensor) -> Iterator[None]:
    """Disable autocast for the device type of ``tensor`` inside the block."""
    device_type = tensor.device.type
    if device_type not in ("cpu", "cuda", "xpu", "mps"):
        yield
        return
    with torch.autocast(device_type=device_type, enabled=False):
        yield


def warn_skipped(what: str) -> None:
    """Warn that the update of the running statistic ``what`` was skipped."""
    warnings.warn(
        f"{what}: the batch holds non-finite values (nan or inf); the update was "
        "skipped and the previous state kept",
        RuntimeWarning,
        stacklevel=3,
    )


@torch.no_grad()
def update_if_finite(state: torch.Tensor, new: torch.Tensor, what: str) -> None:
    """Copy ``new`` into the running statistic ``state``, unless ``new`` is not finite.

    One ``torch.isfinite(new).all()`` per update. On the CPU the answer is a Python
    bool at no cost: a non-finite ``new`` is skipped with a ``RuntimeWarning``. On an
    accelerator, reading it would stall the host until the device catches up, so
    ``torch.where`` keeps the old state on the device instead, without a warning
    (the loss of that batch is non-finite too, which the caller sees). Call it after
    any all-reduce: every process then holds the same ``new`` and takes the same
    decision.

    Args:
        state: The statistic, updated in place.
        new: Its proposed next value, broadcastable to ``state``.
        what: Name of the statistic for the warning, e.g. ``"DINOLoss centre"``.
    """
    finite = torch.isfinite(new).all()
    if state.device.type == "cpu":
        if not finite:
            warn_skipped(what)
            return
        state.copy_(new)
    else:
        state.copy_(torch.where(finite, new.to(state.dtype), state))


class _Gram(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return x @ x.mT

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return (grad + grad.mT) @ x


def gram(x: torch.Tensor) -> torch.Tensor:
    """``x @ x.mT`` (any leading batch dimensions) with a one-product backward,
    ``(g + g.mT) @ x``; autograd would multiply twice, once per operand. The
    backward is itself differentiable."""
    return _Gram.apply(x)


def check_distributed_available(name: str, flag: bool) -> None:
    """Raise ``ValueError`` if ``flag`` asks for gathering without torch.distributed."""
    if flag and not torch.distributed.is_available():
        raise ValueError(
            f"{name}=True but torch.distributed is not available in this PyTorch "
            f"build; set {name}=False."
        )


def check_pair(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``a`` and ``b`` are both ``[batch, dim]`` alike."""
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must both have shape [batch, dim], got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
