"""Process-group start-up from the environment that ``torchrun`` sets."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist

__all__ = [
    "init_distributed_from_env",
    "process_group_scope",
    "env_world_size",
    "env_rank",
    "default_device",
]


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "")
    try:
        return int(text) if text else default
    except ValueError:
        raise ValueError(
            f"environment variable {name}={text!r} is not an integer"
        ) from None


def env_world_size() -> int:
    """World size of the running group, else ``WORLD_SIZE`` (1 when unset)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return _env_int("WORLD_SIZE", 1)


def env_rank() -> int:
    """Rank in the running group, else ``RANK`` (0 when unset)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return _env_int("RANK", 0)


def init_distributed_from_env() -> bool:
    """Initialise ``torch.distributed`` when launched by ``torchrun``.

    Reads ``WORLD_SIZE``, ``RANK`` (and ``MASTER_ADDR``/``MASTER_PORT``) from the
    environment. Uses NCCL when CUDA is available and gloo otherwise. Does nothing
    when a process group already exists or when ``WORLD_SIZE`` is unset or 1.

    Returns:
        ``True`` if this call created the process group (the caller must then
        destroy it: :func:`process_group_scope` does), ``False`` otherwise.
    """
    if not dist.is_available() or dist.is_initialized():
        return False
    if _env_int("WORLD_SIZE", 1) <= 1:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(_env_int("LOCAL_RANK", 0))
    dist.init_process_group(backend=backend)
    return True


@contextlib.contextmanager
def process_group_scope() -> Iterator[bool]:
    """Start the process group ``torchrun`` asks for, and destroy it on exit.

    A group that already existed is used and left alone; a group this scope
    created is destroyed on every way out (normal end, exception, signal).

    Yields:
        Whether this scope created the group.

    Example:
        >>> with process_group_scope() as created:  # not under torchrun
        ...     created
        False
    """
    created = init_distributed_from_env()
    try:
        yield created
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def default_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", _env_int("LOCAL_RANK", 0))
    return torch.device("cpu")
