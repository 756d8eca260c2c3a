"""Private numerics helpers shared by the losses.

The clustering losses exponentiate scores divided by small temperatures, so they are
computed in at least float32 and outside autocast: a bf16/fp16 ``exp`` or ``log``
there loses every significant digit (or overflows) long before float32 does.

Running statistics (DINO and iBOT centres, TiCo's covariance, memory banks,
momentum targets) outlive the batch that fed them: one non-finite
batch folded in makes every later loss non-finite. :func:`keep_finite` and
:func:`update_if_finite` keep the old state instead.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence

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


def all_finite(tensor: torch.Tensor) -> torch.Tensor:
    """0-d bool tensor: whether every entry of ``tensor`` is finite.

    The same answer as ``torch.isfinite(tensor).all()`` from one min/max reduction
    (which propagates ``nan``; ``inf`` shows in the max, ``-inf`` in the min),
    without a boolean tensor the size of the input: about 3x faster on the CPU.
    """
    if tensor.numel() == 0:
        return torch.ones((), dtype=torch.bool, device=tensor.device)
    return torch.isfinite(torch.stack(torch.aminmax(tensor))).all()


def all_finite_on_host(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether every entry of every tensor is finite, as a Python bool.

    On the CPU, one ``aminmax`` per tensor with its two extrema checked in Python
    (faster than more tensor operations, and than the CPU ``_foreach_norm``
    with ``ord=inf``, which is a slow per-tensor path). Elsewhere one fused
    max-``|x|`` kernel over all tensors, and one host sync to read the answer.
    """
    tensors = [tensor for tensor in tensors if tensor.numel()]
    if not tensors:
        return True
    if _read_on_host(tensors[0]):
        return all(
            math.isfinite(extremum)
            for tensor in tensors
            for extremum in torch.aminmax(tensor)
        )
    largest = torch._foreach_norm(tensors, float("inf"))
    return bool(torch.stack(largest).isfinite().all())


def _read_on_host(tensor: torch.Tensor) -> bool:
    """Whether a flag computed from ``tensor`` is free to read on the host."""
    return tensor.device.type == "cpu"


def keep_finite(
    new: Sequence[torch.Tensor], old: Sequence[torch.Tensor], what: str
) -> list[torch.Tensor]:
    """Return ``new`` if all its entries are finite, else ``old`` (running statistics).

    The tensors of ``new`` are the next values of one statistic's parts (e.g. a
    running mean and covariance): all are taken, or none. One min/max reduction
    per tensor (:func:`all_finite`). On the CPU the answer is a Python bool at no
    cost: a non-finite ``new`` is refused with a ``RuntimeWarning``. On an
    accelerator, reading it would stall the host until the device catches up, so
    ``torch.where`` picks ``old`` on the device instead, without a warning (the loss
    of that batch is non-finite too, which the caller sees). Call it after any
    all-reduce: every process then holds the same ``new`` and decides alike.
    Statistics carry no gradient: call it under ``torch.no_grad()``.

    Args:
        new: Proposed next values.
        old: Current values, the same shapes as ``new``.
        what: Name of the statistic for the warning, e.g. ``"DINOLoss centre"``.
    """
    if _read_on_host(new[0]):
        if all_finite_on_host(new):
            return list(new)
        warn_skipped(what)
        return list(old)
    checks = [all_finite(tensor) for tensor in new]
    finite = checks[0] if len(checks) == 1 else torch.stack(checks).all()
    return [torch.where(finite, n, o.to(n.dtype)) for n, o in zip(new, old)]


def update_if_finite(
    state: Sequence[torch.Tensor], new: Sequence[torch.Tensor], what: str
) -> None:
    """Copy each of ``new`` into ``state`` in place, unless one of them holds a
    non-finite value (see :func:`keep_finite`)."""
    for target, kept in zip(state, keep_finite(new, state, what)):
        if kept is not target:
            target.copy_(kept)


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
