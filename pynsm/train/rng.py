"""Capture and restore every random number generator a training run touches."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

__all__ = ["get_rng_state", "set_rng_state", "preserved_rng"]


def get_rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's, torch's CPU and (if any) CUDA generators.

    Everything is stored as tensors, ints, floats, strings and tuples so that the
    result survives ``torch.load(weights_only=True)``.

    Example:
        >>> import torch
        >>> from pynsm.train.rng import get_rng_state, set_rng_state
        >>> state = get_rng_state()
        >>> a = torch.rand(2)
        >>> set_rng_state(state)
        >>> torch.equal(a, torch.rand(2))
        True
    """
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators from a dict made by :func:`get_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block without changing any generator's state as seen after it.

    Example:
        >>> import torch
        >>> state = torch.get_rng_state()
        >>> with preserved_rng():
        ...     _ = torch.rand(5)
        >>> torch.equal(state, torch.get_rng_state())
        True
    """
    state = get_rng_state()
    try:
        yield
    finally:
        set_rng_state(state)
