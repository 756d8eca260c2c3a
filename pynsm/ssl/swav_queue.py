"""The SwaV feature queue: high-resolution features of past batches, per view."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def _make_memory_bank(size: int) -> nn.Module:
    # imported lazily so that pynsm.arch does not depend on pynsm.losses at import
    from pynsm.losses.memory_bank import MemoryBankModule

    return MemoryBankModule(size=size)


class SwaVQueue(nn.Module):
    """One first-in-first-out memory bank per high-resolution view (SwaV with queue).

    Small batches give Sinkhorn too few samples to spread them evenly over the
    prototypes; SwaV then appends the features of the previous batches to every
    high-resolution view before computing its codes (Caron et al., 2020). Each call
    pushes the current batch's features (from the first epoch on) and returns what
    the queue held *before* the push, transposed to ``[queue_length, dim]`` — but
    only from epoch ``start_queue_at_epoch`` on, so that the stored features come
    from a network that has already learnt something; before, it returns ``None``.

    The banks are :class:`pynsm.losses.MemoryBankModule` instances. Their content
    and write positions travel in this module's ``state_dict`` (as its extra
    state), so a checkpointed run with a queue resumes exactly where it stopped.

    Args:
        queue_length: Number of features kept per view.
        num_queues: Number of high-resolution views (2 in SwaV).
        start_queue_at_epoch: First epoch at which the queue is returned.

    Example:
        >>> queue = SwaVQueue(queue_length=8, num_queues=2, start_queue_at_epoch=1)
        >>> features = [torch.randn(4, 16), torch.randn(4, 16)]
        >>> queue(features, epoch=0) is None
        True
        >>> [tuple(q.shape) for q in queue(features, epoch=1)]
        [(8, 16), (8, 16)]
    """

    def __init__(
        self, queue_length: int, num_queues: int = 2, start_queue_at_epoch: int = 0
    ) -> None:
        super().__init__()
        for name, value, low in [
            ("queue_length", queue_length, 1),
            ("num_queues", num_queues, 1),
            ("start_queue_at_epoch", start_queue_at_epoch, 0),
        ]:
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        self.queue_length = queue_length
        self.start_queue_at_epoch = start_queue_at_epoch
        self.banks = nn.ModuleList(
            [_make_memory_bank(queue_length) for _ in range(num_queues)]
        )

    def get_extra_state(self) -> dict[str, list[Tensor]]:
        # the banks keep their own buffers out of state_dict (a cache, as the
        # documented MemoryBankModule does); the queue saves them so resuming is exact
        return {
            "banks": [bank.bank.detach().clone() for bank in self.banks],
            "pointers": [bank.bank_ptr.detach().clone() for bank in self.banks],
        }

    def set_extra_state(self, state: dict[str, list[Tensor]]) -> None:
        banks, pointers = state["banks"], state["pointers"]
        if len(banks) != len(self.banks) or len(pointers) != len(self.banks):
            raise ValueError(
                f"the saved queue has {len(banks)} banks, this one {len(self.banks)}"
            )
        for bank, stored, pointer in zip(self.banks, banks, pointers):
            if stored.numel() and stored.shape[1] != self.queue_length:
                raise ValueError(
                    f"the saved queue holds {stored.shape[1]} features per view, "
                    f"this one {self.queue_length}"
                )
            bank.bank = stored.detach().clone().to(bank.bank_ptr.device)
            bank.bank_ptr = pointer.detach().clone().to(bank.bank_ptr.device)

    def is_active(self, epoch: int) -> bool:
        """Whether the queue is used by the loss at ``epoch``."""
        return epoch >= self.start_queue_at_epoch

    @torch.no_grad()
    def forward(
        self, high_resolution_features: Sequence[Tensor], epoch: int
    ) -> list[Tensor] | None:
        """Push ``[B, dim]`` features of every view; return the previous queues.

        Args:
            high_resolution_features: One ``[B, dim]`` tensor per view.
            epoch: Current epoch (0-based).

        Returns:
            One ``[queue_length, dim]`` tensor per view, or ``None`` before
            ``start_queue_at_epoch`` (or while a bank is still empty).
        """
        if len(high_resolution_features) != len(self.banks):
            raise ValueError(
                f"expected {len(self.banks)} high-resolution feature tensors (one per "
                f"queue), got {len(high_resolution_features)}"
            )
        queued = []
        for bank, features in zip(self.banks, high_resolution_features):
            _, stored = bank(features.detach(), update=True)
            queued.append(None if stored is None else stored.T)
        if not self.is_active(epoch) or any(q is None for q in queued):
            return None
        return queued
