"""A first-in-first-out bank of past embeddings, used as extra negatives (MoCo)."""

from __future__ import annotations

import torch
from torch import nn


class MemoryBankModule(nn.Module):
    """First-in-first-out memory bank of embeddings from previous batches.

    Losses such as :class:`~pynsm.losses.NTXentLoss` and
    :class:`~pynsm.losses.CO2Regularizer` subclass it so that, when ``size > 0``,
    the entries of the bank serve as negatives (MoCo, He et al. 2020,
    https://arxiv.org/abs/1911.05722). The bank is created on the first call, filled
    with random unit vectors of the embedding dimension; each update overwrites the
    oldest entries with the new batch (a ring buffer: when a batch reaches the end,
    the remaining rows wrap around to the start).

    Args:
        size: Number of embeddings the bank stores. ``0`` disables the bank.

    Attributes:
        bank: ``[dim, size]`` tensor of stored embeddings (empty before first use).
        bank_ptr: ``[1]`` index of the next entry to overwrite.

    Raises:
        ValueError: if ``size`` is negative or not an integer.

    Example:
        >>> import torch
        >>> from pynsm.losses import MemoryBankModule
        >>> memory = MemoryBankModule(size=8)
        >>> out, bank = memory(torch.randn(4, 3), update=True)
        >>> bank.shape  # [dim, size], the entries from before this update
        torch.Size([3, 8])
        >>> memory.bank[:, :4].T.shape  # the 4 new rows are now stored
        torch.Size([4, 3])
    """

    bank: torch.Tensor
    bank_ptr: torch.Tensor

    def __init__(self, size: int = 65536) -> None:
        super().__init__()
        if isinstance(size, bool) or not isinstance(size, int):
            raise ValueError(f"size must be an int, got {type(size).__name__}")
        if size < 0:
            raise ValueError(f"size must be non-negative, got {size}")
        self.size = size
        # not persistent: the bank is a cache of recent embeddings, rebuilt on use
        self.register_buffer("bank", torch.empty(0), persistent=False)
        self.register_buffer(
            "bank_ptr", torch.zeros(1, dtype=torch.long), persistent=False
        )

    @torch.no_grad()
    def _init_memory_bank(self, output: torch.Tensor) -> None:
        # keep float32 (or float64) storage even when the batch comes from autocast
        dtype = torch.promote_types(output.dtype, torch.float32)
        bank = torch.randn(output.shape[1], self.size, device=output.device)
        self.bank = nn.functional.normalize(bank, dim=0).to(dtype)
        self.bank_ptr = torch.zeros(1, dtype=torch.long, device=output.device)

    @torch.no_grad()
    def _dequeue_and_enqueue(self, batch: torch.Tensor) -> None:
        batch = batch.detach()[-self.size :]  # a batch larger than the bank: newest
        ptr = int(self.bank_ptr)
        positions = (ptr + torch.arange(batch.shape[0], device=self.bank.device)) % (
            self.size
        )
        self.bank[:, positions] = batch.T.to(self.bank)
        self.bank_ptr[0] = (ptr + batch.shape[0]) % self.size

    def forward(
        self,
        output: torch.Tensor,
        labels: torch.Tensor | None = None,
        update: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the batch and a copy of the bank, then optionally store the batch.

        Args:
            output: ``[B, dim]`` embeddings of the current batch.
            labels: Ignored (kept for API compatibility).
            update: Store ``output`` (detached) in the bank after reading it.

        Returns:
            ``(output, bank)`` where ``bank`` is a detached ``[dim, size]`` copy of
            the entries *before* this update, or ``None`` when ``size == 0``.
        """
        if self.size == 0:
            return output, None
        if output.ndim != 2:
            raise ValueError(
                f"output must have shape [batch, dim], got {tuple(output.shape)}"
            )
        if self.bank.numel() == 0:
            self._init_memory_bank(output)
        elif self.bank.shape[0] != output.shape[1]:
            raise ValueError(
                f"output has dimension {output.shape[1]} but the memory bank stores "
                f"vectors of dimension {self.bank.shape[0]}"
            )
        bank = self.bank.clone().detach()
        if update:
            self._dequeue_and_enqueue(output)
        return output, bank
