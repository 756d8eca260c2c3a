"""Per-epoch bookkeeping: the history entry, epoch metrics, the progress-bar text."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from pynsm import distributed
from pynsm.train.hooks import epoch_values
from pynsm.train.rng import preserved_rng

__all__ = ["RESERVED", "reduce_epoch", "run_epoch_metrics", "postfix"]

#: History fields written by the trainer: metrics may not reuse these names.
RESERVED = ("epoch", "loss", "seconds", "lr", "skipped_steps")


def reduce_epoch(
    loss_sum: Tensor,
    batches: int,
    skipped: int,
    sums: Mapping[str, float | Tensor],
    device: torch.device,
) -> tuple[float, float, int, dict[str, float]]:
    """Sum the epoch's counters over processes (one all-reduce) and average.

    Args:
        loss_sum: Sum of this process's batch losses (0-d tensor).
        batches: Batches this process trained on.
        skipped: Batches this process skipped (non-finite loss).
        sums: Sums of this process's ``step_metrics()`` values, same keys on
            every process.
        device: Where the counters live (the trainer's device).

    Returns:
        ``(mean_loss, batches, skipped, metric_means)`` over all processes;
        the means are NaN when no batch was trained on.

    Raises:
        ValueError: a metric name is one of :data:`RESERVED`.
    """
    keys = sorted(sums)
    clash = [key for key in keys if key in RESERVED]
    if clash:
        raise ValueError(f"step_metrics() key {clash[0]!r} is a history field")
    totals = torch.stack(
        [
            loss_sum.to(device).double(),
            torch.tensor(float(batches), dtype=torch.float64, device=device),
            torch.tensor(float(skipped), dtype=torch.float64, device=device),
        ]
        + [torch.as_tensor(sums[k], device=device).double() for k in keys]
    )
    distributed.all_reduce_sum(totals)
    values = totals.tolist()
    count = values[1]
    mean = (lambda total: total / count) if count else (lambda total: float("nan"))
    means = {key: mean(value) for key, value in zip(keys, values[3:])}
    return mean(values[0]), count, int(values[2]), means


def run_epoch_metrics(
    fn: Callable[[nn.Module], Mapping[str, Any]] | None,
    task: nn.Module,
    rank: int,
    world_size: int,
) -> dict[str, float]:
    """Call ``fn(task)`` on rank 0 without disturbing training; share the result.

    The task is in eval mode under ``torch.no_grad`` during the call, and every
    module's own mode is put back after it; the random generators are saved and
    restored around it. Every process returns rank 0's values.

    Example:
        >>> import torch
        >>> net = torch.nn.Dropout(0.5)
        >>> state = torch.get_rng_state()
        >>> run_epoch_metrics(lambda m: {"kept": (m(torch.ones(8)) > 0).sum(),
        ...                              "noise": torch.rand(()).item() * 0 + 1},
        ...                   net, rank=0, world_size=1)
        {'kept': 8.0, 'noise': 1.0}
        >>> net.training, torch.equal(state, torch.get_rng_state())
        (True, True)
    """
    if fn is None:
        return {}
    values: dict[str, float] | None = None
    if rank == 0:
        modes = [(module, module.training) for module in task.modules()]
        try:
            with preserved_rng(), torch.no_grad():
                task.eval()
                values = epoch_values(fn(task), "epoch_metrics")
        finally:
            for module, mode in modes:
                module.training = mode
        clash = [key for key in values if key in RESERVED]
        if clash:
            raise ValueError(f"epoch_metrics key {clash[0]!r} is a history field")
    if world_size > 1 and dist.is_initialized():
        box = [values]
        dist.broadcast_object_list(box, src=0)
        values = box[0]
    return dict(values or {})


def postfix(values: Mapping[str, Any]) -> dict[str, str]:
    """Short text for the progress bar: ``{"loss": "0.1234", "epoch": "3"}``."""
    out = {}
    for key, value in values.items():
        number = float(value.detach() if isinstance(value, Tensor) else value)
        out[key] = str(int(number)) if key == "epoch" else f"{number:.4g}"
    return out
