"""DistributedDataParallel wrapping, with buffers that stay each process's own.

DDP copies rank 0's buffers to every process before each forward
(``broadcast_buffers``). That is right for BatchNorm statistics but wrong for state
that each process accumulates from its own data, such as a SwaV feature queue: each
process must keep its own queue (Caron et al., 2020), or all of them hold rank 0's
features. A module marks such state with a class or instance attribute::

    class FeatureQueue(nn.Module):
        ddp_rank_local = True   # buffers and extra state belong to this process

Its buffers are then never broadcast, and checkpoints keep one copy of its
``state_dict`` entries per process (restored to the same rank on resume).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["rank_local_prefixes", "rank_local_state", "wrap_ddp"]

#: Attribute marking a module whose state is per process.
RANK_LOCAL_ATTRIBUTE = "ddp_rank_local"


def rank_local_prefixes(module: nn.Module) -> list[str]:
    """``state_dict`` prefixes (``"queue."``) of the submodules marked rank-local.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        >>> net[1].ddp_rank_local = True
        >>> rank_local_prefixes(net)
        ['1.']
    """
    prefixes = []
    for name, sub in module.named_modules():
        if getattr(sub, RANK_LOCAL_ATTRIBUTE, False) is True:
            prefix = f"{name}." if name else ""
            if not any(prefix.startswith(p) for p in prefixes):
                prefixes.append(prefix)
    return prefixes


def rank_local_state(module: nn.Module, prefixes: list[str]) -> dict[str, Any]:
    """The entries of ``module.state_dict()`` under ``prefixes`` (detached copies)."""
    if not prefixes:
        return {}
    return {
        key: value.detach().clone() if isinstance(value, Tensor) else value
        for key, value in module.state_dict().items()
        if any(key.startswith(p) for p in prefixes)
    }


def _shared_buffers(module: nn.Module, prefixes: list[str]) -> list[Tensor]:
    return [
        buf
        for name, buf in module.named_buffers()
        if not any(name.startswith(p) for p in prefixes)
    ]


def wrap_ddp(
    forward: nn.Module,
    task: nn.Module,
    device: torch.device,
    *,
    broadcast_buffers: bool,
    find_unused_parameters: bool,
) -> tuple[DistributedDataParallel, Callable[[], None] | None]:
    """Wrap ``forward`` (a module around ``task``) in DDP.

    Returns:
        The DDP module and, when some buffers must be synchronised by hand (the
        task has rank-local state and ``broadcast_buffers`` is on), a function to
        call before every forward that broadcasts rank 0's *other* buffers; else
        ``None`` (DDP does it, or nothing is synchronised).
    """
    prefixes = rank_local_prefixes(task)
    by_hand = broadcast_buffers and bool(prefixes)
    kwargs: dict[str, Any] = {"find_unused_parameters": find_unused_parameters}
    if device.type == "cuda":
        kwargs["device_ids"] = [device.index]
    if not broadcast_buffers or by_hand:
        # newer torch calls the switch forward_sync_buffers (broadcast_buffers is
        # deprecated there); older torch only knows broadcast_buffers
        params = inspect.signature(DistributedDataParallel.__init__).parameters
        key = (
            "forward_sync_buffers"
            if "forward_sync_buffers" in params
            else ("broadcast_buffers")
        )
        kwargs[key] = False
    ddp = DistributedDataParallel(forward, **kwargs)
    if not by_hand:
        return ddp, None

    def sync() -> None:
        # looked up each time: modules may replace a buffer tensor (lazy banks)
        with torch.no_grad():
            for buf in _shared_buffers(task, prefixes):
                dist.broadcast(buf, src=0)

    sync()
    return ddp, sync
