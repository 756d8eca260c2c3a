"""Random token masking for masked vision transformers (MSN anchors)."""

from __future__ import annotations

import torch
from torch import Tensor


def num_kept_tokens(num_tokens: int, mask_ratio: float) -> int:
    """Number of tokens that :func:`random_token_mask` keeps.

    ``int(num_tokens * mask_ratio)`` tokens are masked, the rest are kept; at least one
    token is always kept so that the transformer has something to attend to.

    Args:
        num_tokens: Number of patch tokens in a sequence.
        mask_ratio: Fraction of tokens to mask, in ``[0, 1)``.

    Returns:
        The number of kept tokens.

    Example:
        >>> num_kept_tokens(16, 0.15)
        14
    """
    if not isinstance(num_tokens, int) or num_tokens < 1:
        raise ValueError(f"num_tokens must be a positive int, got {num_tokens!r}")
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio!r}")
    return max(1, num_tokens - int(num_tokens * mask_ratio))


def random_token_mask(
    size: tuple[int, int],
    mask_ratio: float = 0.6,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw, for every sequence of a batch, which patch tokens to keep and to mask.

    Each row is an independent uniformly random permutation of ``range(num_tokens)``
    split into the kept and the masked part (both sorted, which makes them easy to read
    and does not matter to a transformer since positions are embedded before gathering).

    Args:
        size: ``(batch_size, num_tokens)``.
        mask_ratio: Fraction of tokens to mask, in ``[0, 1)``; see
            :func:`num_kept_tokens` for the exact count.
        device: Device of the returned indices (defaults to the generator's device, or
            CPU).
        generator: Optional random generator for reproducible masks.

    Returns:
        ``(idx_keep, idx_mask)`` of shapes ``[batch_size, num_keep]`` and
        ``[batch_size, num_tokens - num_keep]`` (``int64``).

    Example:
        >>> idx_keep, idx_mask = random_token_mask((2, 16), mask_ratio=0.25)
        >>> idx_keep.shape, idx_mask.shape
        (torch.Size([2, 12]), torch.Size([2, 4]))
    """
    if len(size) != 2:
        raise ValueError(f"size must be (batch_size, num_tokens), got {size!r}")
    batch_size, num_tokens = int(size[0]), int(size[1])
    if batch_size < 1:
        raise ValueError(f"size[0] (batch_size) must be positive, got {batch_size}")
    num_keep = num_kept_tokens(num_tokens, mask_ratio)
    if device is None:
        device = generator.device if generator is not None else "cpu"
    # argsort of i.i.d. uniform noise is a uniformly random permutation per row
    noise = torch.rand(batch_size, num_tokens, device=device, generator=generator)
    order = noise.argsort(dim=1)
    idx_keep = order[:, :num_keep].sort(dim=1).values
    idx_mask = order[:, num_keep:].sort(dim=1).values
    return idx_keep, idx_mask
