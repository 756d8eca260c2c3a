"""What a model needs from a dataset, checked before any work is done."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import TensorDataset

from pynsm.validation import check_bool, check_int

__all__ = ["ImageDatasetInfo", "check_image_dataset"]


@dataclass(frozen=True)
class ImageDatasetInfo:
    """Shape facts of a train/test pair of image datasets."""

    channels: int
    height: int
    width: int
    num_classes: int


def check_image_dataset(
    train: TensorDataset,
    test: TensorDataset,
    *,
    min_classes: int = 2,
    min_size: int = 1,
    square: bool = False,
) -> ImageDatasetInfo:
    """Check a pair of ``(images [N, C, H, W], labels [N])`` datasets for a model.

    The datasets are those of :func:`~pynsm.data.load_npz` or
    :func:`~pynsm.data.load_digits`: float images ``[N, C, H, W]`` and int64
    labels ``0..K-1``.

    Args:
        train: Training set (not empty).
        test: Test set (not empty), images of the same ``[C, H, W]``.
        min_classes: Fewest distinct labels (a readout needs 2).
        min_size: Smallest image height and width (e.g. a convolution's kernel).
        square: Require ``H == W``.

    Returns:
        Channels, height, width and number of classes ``K`` (``max label + 1``).

    Raises:
        ValueError: a check fails; the message says which and what was found.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> from pynsm.data import check_image_dataset
        >>> data = TensorDataset(torch.zeros(4, 1, 8, 8), torch.tensor([0, 1, 0, 1]))
        >>> check_image_dataset(data, data, min_size=3)
        ImageDatasetInfo(channels=1, height=8, width=8, num_classes=2)
        >>> check_image_dataset(data, data, min_size=9)
        Traceback (most recent call last):
        ...
        ValueError: images are 8x8 but the model needs at least 9x9
    """
    min_classes = check_int("min_classes", min_classes, minimum=1)
    min_size = check_int("min_size", min_size, minimum=1)
    square = check_bool("square", square)
    shapes = []
    for name, data in (("training", train), ("test", test)):
        if not isinstance(data, TensorDataset) or len(data.tensors) < 2:
            raise TypeError(f"the {name} set must be a TensorDataset(images, labels)")
        images, labels = data.tensors[0], data.tensors[1]
        if len(images) == 0:
            raise ValueError(f"the {name} set is empty")
        if images.dim() != 4:
            raise ValueError(
                f"{name} images must be [N, C, H, W], got {tuple(images.shape)}"
            )
        if labels.dtype != torch.int64 or labels.shape != (len(images),):
            raise ValueError(f"{name} labels must be int64 [N], got {labels.dtype}")
        if int(labels.min()) < 0:
            raise ValueError(f"{name} labels must be >= 0, got {int(labels.min())}")
        shapes.append(tuple(images.shape[1:]))
    if shapes[0] != shapes[1]:
        raise ValueError(
            f"training and test images differ in shape: {shapes[0]} vs {shapes[1]}"
        )
    channels, height, width = shapes[0]
    if min(height, width) < min_size:
        raise ValueError(
            f"images are {height}x{width} but the model needs at least "
            f"{min_size}x{min_size}"
        )
    if square and height != width:
        raise ValueError(f"the model needs square images, got {height}x{width}")
    found = len(torch.unique(train.tensors[1]))
    if found < min_classes:
        raise ValueError(
            f"the training set holds {found} class(es); at least {min_classes} "
            "are needed for a readout"
        )
    num_classes = int(max(train.tensors[1].max(), test.tensors[1].max())) + 1
    return ImageDatasetInfo(int(channels), int(height), int(width), num_classes)
