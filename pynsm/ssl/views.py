"""The view size of the SSL models: training on views smaller than the images."""

from __future__ import annotations

from torch import Tensor, nn

from pynsm.validation import check_int

__all__ = ["check_view_size", "resize_to_view"]


def check_view_size(view_size: int | None, image_size: int) -> int:
    """``view_size`` checked against ``image_size`` (``None``: the image size).

    Example:
        >>> check_view_size(None, 28), check_view_size(14, 28)
        (28, 14)
    """
    if view_size is None:
        return image_size
    view_size = check_int("view_size", view_size, minimum=2)
    if view_size > image_size:
        raise ValueError(
            f"view_size ({view_size}) must not exceed image_size ({image_size})"
        )
    return view_size


def resize_to_view(images: Tensor, view_size: int) -> Tensor:
    """``images [B, C, H, W]`` averaged down to ``[B, C, view_size, view_size]``.

    Area interpolation: each output pixel is the mean of the input pixels it
    covers (a 2x2 average when halving 28x28 MNIST to 14x14), the same resampling
    that a whole-image crop of :class:`~pynsm.data.multicrop.MultiCrop` applies
    when it halves an image. Images already of that size are returned as they are.

    Example:
        >>> import torch
        >>> resize_to_view(torch.arange(16.0).view(1, 1, 4, 4), 2)
        tensor([[[[ 2.5000,  4.5000],
                  [10.5000, 12.5000]]]])
    """
    if images.shape[-2:] == (view_size, view_size):
        return images
    return nn.functional.interpolate(images, size=(view_size, view_size), mode="area")
