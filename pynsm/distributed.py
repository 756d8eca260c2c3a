"""Small helpers around :mod:`torch.distributed` shared by losses and the trainer.

Every helper works without an initialised process group (it then behaves as a
single process), so losses can call them unconditionally.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["is_distributed", "world_size", "rank", "gather", "all_reduce_sum"]


def is_distributed() -> bool:
    """Return ``True`` when a :mod:`torch.distributed` process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes in the default group (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """Rank of this process in the default group (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


class _GatherWithGradient(torch.autograd.Function):
    """All-gather whose backward sends each process the gradient of its own slice.

    ``torch.distributed.all_gather`` is not differentiable; here the gradients that
    every process computes for the gathered tensor are summed (all-reduce), and each
    process keeps the rows it contributed. With the usual convention that every
    process averages its loss, this makes the gradient equal to that of one process
    holding the whole batch, divided by the world size, which is what
    :class:`~torch.nn.parallel.DistributedDataParallel`'s gradient averaging expects.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return tuple(parts)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        stacked = torch.stack(grads)
        dist.all_reduce(stacked)
        return stacked[dist.get_rank()]


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every process along dim 0, keeping gradients.

    Args:
        tensor: ``[B, *]``, the same shape on every process.

    Returns:
        ``[world_size * B, *]``, rank 0's rows first. Without a process group the
        input is returned unchanged.

    Example:
        >>> import torch
        >>> from pynsm.distributed import gather
        >>> gather(torch.ones(2, 3)).shape  # single process
        torch.Size([2, 3])
    """
    if not is_distributed() or dist.get_world_size() == 1:
        return tensor
    return torch.cat(_GatherWithGradient.apply(tensor), dim=0)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over processes in place (no-op without a process group).

    Not differentiable: use it for statistics computed under ``torch.no_grad()``
    (Sinkhorn normalisers, running centres, counts).
    """
    if is_distributed() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor
