"""What a model needs from a dataset, checked before any work is done."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, TensorDataset

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
    train: Dataset,
    test: Dataset,
    *,
    min_classes: int = 2,
    min_size: int = 1,
    square: bool = False,
) -> ImageDatasetInfo:
    """Check a pair of ``(images [N, C, H, W], labels [N])`` datasets for a model.

    The datasets are those of :func:`~pynsm.data.load_dataset`: in-memory
    :class:`~torch.utils.data.TensorDataset` of float images ``[N, C, H, W]``
    and int64 labels ``0..K-1``, or lazy datasets (image folders) with an int64
    ``targets`` tensor, whose image shape is read from their first item (no
    image beyond it is decoded).

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
    shapes, targets = [], []
    for name, data in (("training", train), ("test", test)):
        shape, labels = _shape_and_labels(name, data)
        if labels.dtype != torch.int64 or labels.dim() != 1:
            raise ValueError(f"{name} labels must be int64 [N], got {labels.dtype}")
        if int(labels.min()) < 0:
            raise ValueError(f"{name} labels must be >= 0, got {int(labels.min())}")
        shapes.append(shape)
        targets.append(labels)
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
    found = len(torch.unique(targets[0]))
    if found < min_classes:
        raise ValueError(
            f"the training set holds {found} class(es); at least {min_classes} "
            "are needed for a readout"
        )
    num_classes = int(max(targets[0].max(), targets[1].max())) + 1
    return ImageDatasetInfo(int(channels), int(height), int(width), num_classes)


def _shape_and_labels(name: str, data: Dataset) -> tuple[tuple[int, ...], torch.Tensor]:
    """``(C, H, W)`` and the ``[N]`` labels, without reading a lazy dataset."""
    if isinstance(data, TensorDataset):
        if len(data.tensors) < 2:
            raise TypeError(f"the {name} set must be a TensorDataset(images, labels)")
        images, labels = data.tensors[0], data.tensors[1]
        if len(images) == 0:
            raise ValueError(f"the {name} set is empty")
        if images.dim() != 4:
            raise ValueError(
                f"{name} images must be [N, C, H, W], got {tuple(images.shape)}"
            )
        if labels.shape != (len(images),):
            raise ValueError(f"{name} labels must be int64 [N], got {labels.dtype}")
        return tuple(images.shape[1:]), labels
    labels = getattr(data, "targets", None)
    if not isinstance(labels, torch.Tensor) or not hasattr(data, "__len__"):
        raise TypeError(
            f"the {name} set must be a TensorDataset(images, labels) or a "
            "map-style dataset with an int64 'targets' tensor"
        )
    if len(data) == 0:
        raise ValueError(f"the {name} set is empty")
    if labels.shape != (len(data),):
        raise ValueError(
            f"{name} targets must have shape [{len(data)}], got {tuple(labels.shape)}"
        )
    image = data[0][0]
    if not isinstance(image, torch.Tensor) or image.dim() != 3:
        raise ValueError(
            f"{name} images must be [C, H, W] tensors, got "
            f"{getattr(image, 'shape', type(image).__name__)}"
        )
    return tuple(image.shape), labels
