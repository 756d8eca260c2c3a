"""A first-in-first-out bank of past embeddings, used as extra negatives (MoCo)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from pynsm import distributed
from pynsm.losses._numerics import all_finite, warn_skipped
from pynsm.validation import check_bool, check_int

__all__ = ["MemoryBankModule"]


def _size_tuple(size: int | Sequence[int]) -> tuple[int, ...]:
    """``size`` as a tuple of non-negative ints ``(length, *dims)``."""
    if isinstance(size, Sequence) and not isinstance(size, str):
        if len(size) == 0:
            raise ValueError("size must hold at least the bank length, got ()")
        sizes = tuple(check_int("size", entry, minimum=0) for entry in size)
        if sizes[0] > 0 and 0 in sizes[1:]:
            raise ValueError(f"size must have feature dimensions >= 1, got {size!r}")
        return sizes
    if isinstance(size, torch.Tensor) and size.ndim == 1:
        return _size_tuple(size.tolist())
    return (check_int("size", size, minimum=0),)


class MemoryBankModule(nn.Module):
    """First-in-first-out memory bank of embeddings from previous batches.

    Losses such as :class:`~pynsm.losses.NTXentLoss` and
    :class:`~pynsm.losses.CO2Regularizer` subclass it so that, when the bank length
    is positive, its entries serve as negatives (MoCo, He et al. 2020,
    https://arxiv.org/abs/1911.05722). The bank starts as random unit vectors; each
    update writes the batch from the write position on. As in lightly, a batch
    that reaches the end of the bank fills it up to the end, its remaining rows are
    dropped, and the next batch starts again at entry 0 (so a batch longer than
    the bank keeps its first rows). A batch holding a non-finite value is not
    stored (``RuntimeWarning``; the bank and its position stay as they were).

    Constructor and layout follow lightly (>= 1.4.26), so code written for
    ``lightly.loss.MemoryBankModule`` runs unchanged:

    * ``size=(length, dim)`` (or ``(length, *dims)``) allocates the bank at
      construction; ``size=length`` (the older form) allocates it at the first call
      from the feature shape of that batch. ``0`` (or a length of ``0``) disables
      the bank.
    * ``.bank`` is stored ``[length, *dims]``, one entry per row.
    * ``forward`` returns a copy of the bank transposed to ``[dim, length]``
      (``bank.transpose(0, -1)``) when ``feature_dim_first=True`` (the default,
      as the losses expect), else ``[length, *dims]`` as stored.

    The bank and its write position are buffers *in* ``state_dict``, so a resumed
    run is exact. Loading adopts the saved bank's shape (a bank not yet allocated
    can receive one, and vice versa); a ``state_dict`` without them (saved by
    lightly or pynsm 1.0.1, where the bank was not saved) leaves the bank as it is.

    Args:
        size: Bank length, or ``(length, *dims)`` to allocate the bank now.
        gather_distributed: Gather the batch from every process (in rank order)
            before adding it, so that all processes store the same entries.
        feature_dim_first: Return the bank as ``[dim, length]`` (``True``) or
            ``[length, dim]`` (``False``).

    Attributes:
        size: ``(length,)`` or ``(length, *dims)`` as given.
        bank: ``[length, *dims]`` stored embeddings (empty before allocation).
        bank_ptr: ``[1]`` index of the next entry to overwrite.

    Raises:
        TypeError: if ``size`` is not an int or a sequence of ints, or a flag is
            not a bool.
        ValueError: if an entry of ``size`` is negative.

    Example:
        >>> import torch
        >>> from pynsm.losses import MemoryBankModule
        >>> memory = MemoryBankModule(size=(8, 3))
        >>> memory.bank.shape  # allocated at construction, one entry per row
        torch.Size([8, 3])
        >>> out, bank = memory(torch.randn(4, 3), update=True)
        >>> bank.shape  # [dim, length]: the entries from before this update
        torch.Size([3, 8])
        >>> memory.bank[:4].shape  # the 4 new rows are now stored
        torch.Size([4, 3])
        >>> MemoryBankModule(8, feature_dim_first=False)(torch.randn(4, 3))[1].shape
        torch.Size([8, 3])
    """

    bank: torch.Tensor
    bank_ptr: torch.Tensor

    def __init__(
        self,
        size: int | Sequence[int] = 65536,
        gather_distributed: bool = False,
        feature_dim_first: bool = True,
    ) -> None:
        super().__init__()
        self.size = _size_tuple(size)
        self.gather_distributed = check_bool("gather_distributed", gather_distributed)
        self.feature_dim_first = check_bool("feature_dim_first", feature_dim_first)
        self.register_buffer("bank", torch.empty(0))
        self.register_buffer("bank_ptr", torch.zeros(1, dtype=torch.long))
        if self.size[0] > 0 and len(self.size) > 1:
            self._init_memory_bank(self.size)

    @property
    def _allocated(self) -> bool:
        return self.bank.ndim >= 2

    @torch.no_grad()
    def _init_memory_bank(
        self,
        size: Sequence[int],
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        bank = torch.randn(*size, device=device or self.bank.device)
        # random unit entries: normalised over the last (feature) dimension
        self.bank = nn.functional.normalize(bank, dim=-1).to(dtype)
        self.bank_ptr = torch.zeros(1, dtype=torch.long, device=self.bank.device)

    @torch.no_grad()
    def _dequeue_and_enqueue(self, batch: torch.Tensor) -> None:
        batch = batch.detach()
        if self.gather_distributed and distributed.world_size() > 1:
            batch = distributed.gather(batch)  # the same rows on every process
        # the pointer is read on the host anyway: fetch the finiteness flag with
        # it, so skipping a non-finite batch costs no extra device sync
        flags = torch.stack([all_finite(batch).to(self.bank_ptr), self.bank_ptr[0]])
        finite, ptr = flags.tolist()
        if not finite:
            warn_skipped(f"{type(self).__name__} memory bank")
            return
        # lightly's rule: fill up to the end of the bank, drop the rest of the
        # batch, and start again at 0
        length = self.size[0]
        if ptr + batch.shape[0] >= length:
            self.bank[ptr:] = batch[: length - ptr].to(self.bank)
            self.bank_ptr.zero_()
        else:
            self.bank[ptr : ptr + batch.shape[0]] = batch.to(self.bank)
            self.bank_ptr[0] = ptr + batch.shape[0]

    def forward(
        self,
        output: torch.Tensor,
        labels: torch.Tensor | None = None,
        update: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the batch and a copy of the bank, then optionally store the batch.

        Args:
            output: ``[B, *dims]`` embeddings of the current batch.
            labels: Ignored; accepted because lightly's signature has it.
            update: Store ``output`` (detached) in the bank after reading it.

        Returns:
            ``(output, bank)``: ``bank`` is a detached copy of the entries *before*
            this update, ``[dim, length]`` with ``feature_dim_first`` and
            ``[length, *dims]`` without, or ``None`` when the length is ``0``.
        """
        if self.size[0] == 0:
            return output, None
        if output.ndim < 2:
            raise ValueError(
                f"output must have shape [batch, dim, ...], got {tuple(output.shape)}"
            )
        if not self._allocated:
            # keep float32 (or float64) storage even when the batch is bf16/fp16
            dtype = torch.promote_types(output.dtype, torch.float32)
            self._init_memory_bank(
                (self.size[0], *output.shape[1:]), output.device, dtype
            )
        elif self.bank.shape[1:] != output.shape[1:]:
            raise ValueError(
                f"output has feature dimension {tuple(output.shape[1:])} but the "
                f"memory bank stores entries of dimension {tuple(self.bank.shape[1:])}"
            )
        bank = self.bank.clone()
        if self.feature_dim_first:
            bank = bank.transpose(0, -1)
        if update:
            self._dequeue_and_enqueue(output)
        return output, bank

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # the saved bank may be allocated where this one is not yet (or the
        # reverse): adopt its shape, after checking it fits this bank's size
        saved = state_dict.get(prefix + "bank")
        if isinstance(saved, torch.Tensor) and saved.shape != self.bank.shape:
            allocated = saved.ndim >= 2
            fits = not allocated or (
                saved.shape[0] == self.size[0]
                and (len(self.size) == 1 or tuple(saved.shape) == self.size)
            )
            if saved.numel() and not allocated or not fits:
                error_msgs.append(
                    f"{prefix}bank: saved shape {tuple(saved.shape)} does not fit a "
                    f"memory bank of size {self.size}"
                )
                return
            self.bank = torch.empty(
                saved.shape, dtype=self.bank.dtype, device=self.bank.device
            )
        super()._load_from_state_dict(
            state_dict,
            prefix,
            local_metadata,
            strict,
            missing_keys,
            unexpected_keys,
            error_msgs,
        )
        # banks were not saved before (and are not by lightly): keep this one
        for name in ("bank", "bank_ptr"):
            if prefix + name in missing_keys:
                missing_keys.remove(prefix + name)
