"""Process-group start-up from the environment that ``torchrun`` sets."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["init_distributed_from_env", "default_device"]


def init_distributed_from_env() -> bool:
    """Initialise ``torch.distributed`` when launched by ``torchrun``.

    Reads ``WORLD_SIZE``, ``RANK`` (and ``MASTER_ADDR``/``MASTER_PORT``) from the
    environment. Uses NCCL when CUDA is available and gloo otherwise. Does nothing
    when a process group already exists or when ``WORLD_SIZE`` is unset or 1.

    Returns:
        ``True`` if this call created the process group (the caller should then
        destroy it at the end), ``False`` otherwise.
    """
    if not dist.is_available() or dist.is_initialized():
        return False
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def default_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")
