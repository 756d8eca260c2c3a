"""Process-group start-up from the environment that ``torchrun`` sets."""

from __future__ import annotations

import atexit
import gc
import os
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = [
    "init_distributed_from_env",
    "env_world_size",
    "env_rank",
    "default_device",
    "resolve_device",
]

#: The process group :func:`init_distributed_from_env` created, destroyed at exit.
_OWNED_GROUP: object | None = None


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


def init_distributed_from_env(timeout: timedelta | None = None) -> bool:
    """Initialise ``torch.distributed`` when launched by ``torchrun``.

    Reads ``WORLD_SIZE``, ``RANK`` (and ``MASTER_ADDR``/``MASTER_PORT``) from the
    environment. Uses NCCL when CUDA is available and gloo otherwise. Does nothing
    when a process group already exists or when ``WORLD_SIZE`` is unset or 1.

    A group this function creates lives as long as the process: later calls (a
    second :meth:`~pynsm.train.Trainer.fit`) reuse it, and it is destroyed when
    the interpreter exits. Creating and destroying a group per ``fit`` would host
    a new rendezvous store on the same fixed ``MASTER_PORT`` each time, which
    races with the other processes when no ``torchrun`` agent holds the store
    (a launch by environment variables alone) and can hang.

    Args:
        timeout: How long the rendezvous and each collective may wait for the
            other processes (torch's default when ``None``).

    Returns:
        ``True`` if this call created the process group, ``False`` otherwise.
    """
    if not dist.is_available() or dist.is_initialized():
        return False
    if _env_int("WORLD_SIZE", 1) <= 1:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(_env_int("LOCAL_RANK", 0))
    if timeout is None:
        dist.init_process_group(backend=backend)
    else:
        dist.init_process_group(backend=backend, timeout=timeout)
    global _OWNED_GROUP
    if _OWNED_GROUP is None:  # once per process, however many groups follow
        atexit.register(_destroy_owned_group)
    _OWNED_GROUP = dist.group.WORLD
    return True


def _destroy_owned_group() -> None:
    global _OWNED_GROUP
    group, _OWNED_GROUP = _OWNED_GROUP, None
    if group is None:
        return
    # DDP wrappers left in reference cycles hold the group (its C++ object, even
    # after ``destroy_process_group``): freeing them now, and dropping our own
    # reference, lets the group's C++ threads be joined while the interpreter is
    # alive. Left to interpreter finalization they could be destroyed unjoined
    # ("terminate called without an active exception", SIGABRT) on a rank that
    # finishes before the others -- also when the user destroyed the group
    # themselves (measured: 3 of 40 torchrun runs of an example script that does)
    gc.collect()
    # a group the user has destroyed (or replaced by one of their own) is theirs
    if dist.is_initialized() and dist.group.WORLD is group:
        dist.destroy_process_group()
    # returning drops the last reference (``group``): the group is freed here


def default_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", _env_int("LOCAL_RANK", 0))
    return torch.device("cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a :class:`torch.device` this torch can use (default: see
    :func:`default_device`).

    Raises:
        ValueError: the name is not a device, or it names a CUDA device that this
            torch build or machine does not have (the message says what there is).

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
        >>> resolve_device("gpu")
        Traceback (most recent call last):
        ...
        ValueError: device='gpu' is not a device name (e.g. 'cpu', 'cuda', 'cuda:1')
    """
    if device is None:
        return default_device()
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device={device!r} is not a device name (e.g. 'cpu', 'cuda', 'cuda:1')"
        ) from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            why = (
                "this torch is a CPU-only build"
                if torch.version.cuda is None
                else "no CUDA device is visible"
            )
            raise ValueError(
                f"device={str(device)!r} is not available: {why}; use device='cpu'"
            )
        if (resolved.index or 0) >= count:
            raise ValueError(
                f"device={str(device)!r} is not available: there are {count} CUDA "
                f"device(s), cuda:0 to cuda:{count - 1}"
            )
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={str(device)!r} is not available on this machine")
    return resolved
