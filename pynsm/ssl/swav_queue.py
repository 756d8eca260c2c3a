"""The SwaV feature queue: high-resolution features of past batches, per view."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pynsm.losses._numerics import all_finite_on_host, warn_skipped
from pynsm.losses.memory_bank import MemoryBankModule
from pynsm.validation import check_int


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
    and write positions are buffers in this module's ``state_dict``, so a
    checkpointed run with a queue resumes exactly where it stopped; a checkpoint of
    a queue of another length or number of views is refused with a ``ValueError``.
    A batch with a non-finite feature in any view is pushed to no bank (with a
    ``RuntimeWarning``), so the queues never hold ``nan`` or ``inf``; deciding
    this costs one host sync per call on an accelerator, next to the one per
    bank that reading the write positions costs anyway.

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

    #: Each process keeps its own queue (as in SwaV): the Trainer leaves modules
    #: marked this way out of DistributedDataParallel's buffer broadcast.
    ddp_rank_local = True

    def __init__(
        self, queue_length: int, num_queues: int = 2, start_queue_at_epoch: int = 0
    ) -> None:
        super().__init__()
        queue_length = check_int("queue_length", queue_length, minimum=1)
        num_queues = check_int("num_queues", num_queues, minimum=1)
        start_queue_at_epoch = check_int(
            "start_queue_at_epoch", start_queue_at_epoch, minimum=0
        )
        self.queue_length = queue_length
        self.start_queue_at_epoch = start_queue_at_epoch
        self.banks = nn.ModuleList(
            [MemoryBankModule(size=queue_length) for _ in range(num_queues)]
        )

    def get_extra_state(self) -> dict[str, int]:
        # the banks save their own contents and write positions (buffers); the
        # queue records its geometry so that a mismatched checkpoint is refused
        # with a clear message before any bank is touched
        return {"queue_length": self.queue_length, "num_queues": len(self.banks)}

    def set_extra_state(self, state: dict[str, object]) -> None:
        if "banks" in state:  # saved when the banks kept their contents outside
            self._load_contents(state["banks"], state["pointers"])
            return
        if state["num_queues"] != len(self.banks):
            raise ValueError(
                f"the saved queue has {state['num_queues']} banks, "
                f"this one {len(self.banks)}"
            )
        if state["queue_length"] != self.queue_length:
            raise ValueError(
                f"the saved queue holds {state['queue_length']} features per view, "
                f"this one {self.queue_length}"
            )

    def _load_contents(self, banks: list[Tensor], pointers: list[Tensor]) -> None:
        # older checkpoints: one [dim, queue_length] tensor per bank
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
            device = bank.bank_ptr.device
            contents = stored.T if stored.numel() else stored
            bank.bank = contents.detach().clone().to(device)
            bank.bank_ptr = pointer.detach().clone().to(device)

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
        # one decision for all views, so that the banks stay aligned: a batch
        # with a non-finite feature in any view is pushed to none of them
        finite = all_finite_on_host(high_resolution_features)
        if not finite:
            warn_skipped("SwaVQueue")
        queued = []
        for bank, features in zip(self.banks, high_resolution_features):
            _, stored = bank(features.detach(), update=finite)
            queued.append(None if stored is None else stored.T)
        if not self.is_active(epoch) or any(q is None for q in queued):
            return None
        return queued
