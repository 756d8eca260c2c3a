"""Mixed precision: which one a device gets, and the autocast context for it."""

from __future__ import annotations

import contextlib

import torch

from pynsm.validation import check_choice

__all__ = ["PRECISIONS", "resolve_precision", "autocast"]

PRECISIONS = ("auto", "bf16", "fp16", "off")


def resolve_precision(value: str | bool | None, device: torch.device) -> str:
    """``"bf16"``, ``"fp16"`` or ``"off"`` for ``mixed_precision=value`` on ``device``.

    ``"auto"`` (or ``True``) is bf16 (fp16 where bf16 is unsupported) on CUDA and
    off elsewhere; ``None``/``False`` is off.

    Example:
        >>> resolve_precision("auto", torch.device("cpu"))
        'off'
    """
    if value is None or value is False:
        return "off"
    if value is True:
        value = "auto"
    check_choice("mixed_precision", value, PRECISIONS)
    if value == "auto":
        if device.type != "cuda":
            return "off"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if value == "fp16" and device.type != "cuda":
        raise ValueError("mixed_precision='fp16' needs a CUDA device")
    return value


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``precision`` (a no-op context for ``"off"``)."""
    if precision == "off":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
