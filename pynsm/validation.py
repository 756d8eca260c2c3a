"""Argument checks shared by every public entry point.

One rule everywhere: a value of the wrong *type* raises :class:`TypeError`, a value
of the right type but outside its range raises :class:`ValueError`, and the message
names the argument. Integers are accepted in any integral form that
:func:`operator.index` understands — Python ints, NumPy integers, 0-d integer
tensors — but never ``bool`` (``True`` as a batch size is a bug, not a 1).

This module imports nothing of the package, so :mod:`pynsm.losses` can use it
without loading the circuits, the SSL models or the harness.

Example:
    >>> import numpy as np
    >>> check_int("max_iterations", np.int64(5), minimum=1)
    5
    >>> check_int("max_iterations", 0, minimum=1)
    Traceback (most recent call last):
    ...
    ValueError: max_iterations must be >= 1, got 0
    >>> check_float("lr", float("inf"), minimum=0.0, strict=True)
    Traceback (most recent call last):
    ...
    ValueError: lr must be a finite number, got inf
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Collection
from typing import Any

__all__ = [
    "check_int",
    "check_optional_int",
    "check_float",
    "check_bool",
    "check_choice",
]


def check_int(
    name: str,
    value: Any,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    """``value`` as a Python ``int``, checked against ``[minimum, maximum]``.

    Args:
        name: The argument's name, used in the message.
        value: Anything :func:`operator.index` accepts (not ``bool``).
        minimum: Smallest allowed value (inclusive), or ``None``.
        maximum: Largest allowed value (inclusive), or ``None``.

    Returns:
        The value as a plain ``int``.

    Raises:
        TypeError: ``value`` is not an integer (or is a ``bool``).
        ValueError: ``value`` is out of range.
    """
    if isinstance(value, bool) or _is_bool_array(value):
        raise TypeError(f"{name} must be an integer, got bool {value!r}")
    try:
        result = operator.index(value)
    except TypeError:
        raise TypeError(
            f"{name} must be an integer, got {type(value).__name__} {value!r}"
        ) from None
    if minimum is not None and result < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {result}")
    if maximum is not None and result > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {result}")
    return result


def check_optional_int(
    name: str,
    value: Any,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int | None:
    """Like :func:`check_int`, but ``None`` passes through unchanged."""
    if value is None:
        return None
    return check_int(name, value, minimum=minimum, maximum=maximum)


def check_float(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    strict: bool = False,
    finite: bool = True,
) -> float:
    """``value`` as a Python ``float``, checked for finiteness and range.

    Args:
        name: The argument's name, used in the message.
        value: A real number (Python, NumPy or 0-d tensor; not ``bool``).
        minimum: Lower bound, or ``None``.
        maximum: Upper bound, or ``None``.
        strict: Bounds are exclusive (``minimum < value < maximum``).
        finite: Refuse ``nan`` and ``±inf``.

    Raises:
        TypeError: ``value`` is not a real number.
        ValueError: ``value`` is not finite (when required) or out of range.
    """
    if isinstance(value, bool) or _is_bool_array(value):
        raise TypeError(f"{name} must be a number, got bool {value!r}")
    if isinstance(value, (str, bytes)):  # float("0.1") would accept text
        raise TypeError(f"{name} must be a number, got str {value!r}")
    if not isinstance(value, numbers.Real):
        try:  # 0-d tensors and NumPy scalars
            value = float(value)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                f"{name} must be a number, got {type(value).__name__} {value!r}"
            ) from None
    result = float(value)
    if math.isnan(result) or (finite and math.isinf(result)):
        raise ValueError(f"{name} must be a finite number, got {result}")
    if minimum is not None and (result <= minimum if strict else result < minimum):
        bound = ">" if strict else ">="
        raise ValueError(f"{name} must be {bound} {minimum}, got {result}")
    if maximum is not None and (result >= maximum if strict else result > maximum):
        bound = "<" if strict else "<="
        raise ValueError(f"{name} must be {bound} {maximum}, got {result}")
    return result


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is a ``bool`` (or NumPy bool); ``TypeError`` otherwise."""
    if isinstance(value, bool):
        return value
    if _is_bool_array(value) and getattr(value, "ndim", 1) == 0:
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")


def check_choice(name: str, value: Any, choices: Collection[Any]) -> Any:
    """``value`` if it is one of ``choices``; ``ValueError`` naming them otherwise."""
    if value not in choices:
        options = ", ".join(repr(choice) for choice in choices)
        raise ValueError(f"{name} must be one of {options}; got {value!r}")
    return value


def _is_bool_array(value: Any) -> bool:
    # NumPy bools and bool tensors: dtype says bool
    dtype = getattr(value, "dtype", None)
    return dtype is not None and str(dtype).rsplit(".", 1)[-1] in ("bool", "bool_")
