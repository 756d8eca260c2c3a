"""Shared helpers of the ready SSL models (private)."""

from __future__ import annotations

from torch import Tensor


def images_from_batch(batch: object, in_channels: int) -> Tensor:
    """Take the images out of a DataLoader batch (``x`` or ``(x, labels, ...)``).

    SSL tasks ignore labels. Returns a floating tensor ``[B, in_channels, H, W]``.
    """
    images = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(images, Tensor):
        raise TypeError(
            "batch must be an image tensor or a (images, labels) pair, got "
            f"{type(images).__name__}"
        )
    if images.dim() != 4 or images.shape[1] != in_channels:
        raise ValueError(
            f"images must have shape [B, {in_channels}, H, W], "
            f"got {tuple(images.shape)}"
        )
    if not images.is_floating_point():
        raise TypeError(f"images must be floating point, got {images.dtype}")
    return images
