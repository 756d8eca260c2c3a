"""Random token masking for masked vision transformers (MSN anchors)."""

from __future__ import annotations

import torch
from torch import Tensor

from pynsm.validation import check_int


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
    num_tokens = check_int("num_tokens", num_tokens, minimum=1)
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


def mask_image_patches(images: Tensor, idx_keep: Tensor, patch_size: int) -> Tensor:
    """Zero every ``patch_size × patch_size`` patch of ``images`` not in ``idx_keep``.

    The pixel-space counterpart of dropping patch tokens, for backbones that see
    whole images (e.g. :class:`~pynsm.ssl.convnet.SmallConvNet` as MSN's anchor):
    patches are numbered row-major over the ``(H / patch_size) × (W / patch_size)``
    grid, exactly as :class:`~pynsm.ssl.vit.MaskedVisionTransformer` numbers its
    tokens. Masked patches become 0, the background of images scaled to ``[0, 1]``.

    Args:
        images: ``[B, C, H, W]``, ``H`` and ``W`` multiples of ``patch_size``.
        idx_keep: ``[B, K]`` integer indices of the patches to keep.
        patch_size: Side of a patch.

    Returns:
        ``[B, C, H, W]``: ``images`` with the other patches set to zero.

    Example:
        >>> images = torch.ones(1, 1, 4, 4)
        >>> mask_image_patches(images, torch.tensor([[0, 3]]), patch_size=2)[0, 0]
        tensor([[1., 1., 0., 0.],
                [1., 1., 0., 0.],
                [0., 0., 1., 1.],
                [0., 0., 1., 1.]])
    """
    if images.dim() != 4:
        raise ValueError(f"images must be [B, C, H, W], got {tuple(images.shape)}")
    patch_size = check_int("patch_size", patch_size, minimum=1)
    batch, _, height, width = images.shape
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"image sides must be multiples of patch_size={patch_size}, "
            f"got {height}×{width}"
        )
    grid_h, grid_w = height // patch_size, width // patch_size
    if idx_keep.dim() != 2 or idx_keep.shape[0] != batch:
        raise ValueError(
            f"idx_keep must have shape [B={batch}, K], got {tuple(idx_keep.shape)}"
        )
    if idx_keep.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"idx_keep must be an integer tensor, got {idx_keep.dtype}")
    if idx_keep.numel() and (idx_keep.min() < 0 or idx_keep.max() >= grid_h * grid_w):
        raise ValueError(f"idx_keep must hold indices in [0, {grid_h * grid_w})")
    keep = torch.zeros(batch, grid_h * grid_w, device=images.device, dtype=images.dtype)
    keep.scatter_(1, idx_keep.long(), 1.0)
    keep = keep.view(batch, 1, grid_h, grid_w)
    keep = keep.repeat_interleave(patch_size, 2).repeat_interleave(patch_size, 3)
    return images * keep
