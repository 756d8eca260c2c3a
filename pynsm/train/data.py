"""The loader a Trainer trains on, and moving batches to its device."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = ["check_not_empty", "build_loader", "to_device"]


def check_not_empty(data: object) -> None:
    """Raise if ``data`` is not a Dataset/DataLoader, or is one with nothing in it.

    Raises:
        TypeError: ``data`` is neither a ``Dataset`` nor a ``DataLoader``.
        ValueError: ``data`` has length 0 (``"data is empty: ..."``).
    """
    if isinstance(data, DataLoader):
        try:
            size = len(data)
        except TypeError:  # an iterable dataset without a length
            return
        if size == 0:
            raise ValueError("data is empty: the DataLoader yields no batches")
        return
    if not isinstance(data, Dataset):
        raise TypeError(
            f"data must be a Dataset or a DataLoader, got {type(data).__name__}"
        )
    try:
        size = len(data)  # type: ignore[arg-type]
    except TypeError:
        return
    if size == 0:
        raise ValueError("data is empty: the dataset has no samples")


def build_loader(
    data: Dataset | DataLoader,
    *,
    batch_size: int,
    world_size: int,
    rank: int,
    shuffle: bool,
    seed: int,
    drop_last: bool,
    num_workers: int,
    pin_memory: bool,
) -> DataLoader:
    """A DataLoader over this process's share of ``data`` (a loader is kept as is).

    A :class:`~torch.utils.data.DistributedSampler` is used also on one process:
    its order depends only on ``(seed, epoch)``, which is what makes resuming
    exact.

    Raises:
        ValueError: the loader would have no batch (``drop_last`` with fewer
            samples than one batch per process).
    """
    if isinstance(data, DataLoader):
        return data
    sampler = DistributedSampler(
        data,
        num_replicas=world_size,
        rank=rank,
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
    )
    loader = DataLoader(
        data,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )
    if len(loader) == 0:
        raise ValueError(
            f"data is empty: {len(data)} samples make no batch of {batch_size} per "
            f"process with drop_last=True over {world_size} processes"
        )
    return loader


def to_device(batch: object, device: torch.device) -> Any:
    """``batch`` with every tensor (in tuples, lists, dicts) moved to ``device``."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(item, device) for item in batch)
    if isinstance(batch, dict):
        return {key: to_device(item, device) for key, item in batch.items()}
    return batch
