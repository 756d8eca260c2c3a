"""Atomic checkpoints: written via a temporary file, read with ``weights_only``."""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from typing import Any

import torch

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "save_checkpoint", "load_checkpoint"]

#: Marker stored in every checkpoint so that files from elsewhere are recognised.
CHECKPOINT_FORMAT = "pynsm.train.checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, not a checkpoint, or not a pynsm checkpoint."""


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write ``state`` to ``path`` atomically.

    The state is saved to a temporary file in the same folder, flushed to disk, and
    then moved over ``path`` with :func:`os.replace` (atomic on POSIX and Windows).
    A process killed at any moment therefore leaves either the previous checkpoint
    or the new one, never a truncated file.

    Args:
        state: A dict of tensors, numbers, strings, lists, tuples and dicts (what
            ``torch.load(weights_only=True)`` accepts). The format marker
            ``state["format"]`` is added.
        path: Destination file; its folder is created if needed.

    Example:
        >>> import tempfile, os, torch
        >>> from pynsm.train import save_checkpoint, load_checkpoint
        >>> path = os.path.join(tempfile.mkdtemp(), "last.pt")
        >>> save_checkpoint({"model": {"w": torch.ones(2)}}, path)
        >>> load_checkpoint(path)["model"]["w"]
        tensor([1., 1.])
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    payload = {**state, "format": CHECKPOINT_FORMAT}
    fd, tmp_path = tempfile.mkstemp(
        dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        # never leave stray temporary files behind, whatever interrupted the save
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device | None = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, executing no code.

    Args:
        path: The checkpoint file.
        map_location: Where to put the tensors (default: CPU).

    Returns:
        The saved dict.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file is corrupt, needs code execution to load
            (``weights_only=True`` refuses it), or is not a pynsm checkpoint.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        RuntimeError,
        EOFError,
        ValueError,
        AttributeError,
        KeyError,
        TypeError,
    ) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(
            f"{path!r} is not a readable checkpoint (corrupt, or it would need code "
            f"execution to load): {type(exc).__name__}: {first_line}"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path!r} is not a pynsm training checkpoint "
            f"(expected format {CHECKPOINT_FORMAT!r})"
        )
    return state
