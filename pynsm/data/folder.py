"""Folders of image files, one sub-folder per class, read lazily with Pillow.

The layout is torchvision's ``ImageFolder`` one, twice: ``DIR/train/<class>/*``
and ``DIR/test/<class>/*`` (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.gif``,
``.tif``, ``.tiff``, ``.webp``). Class names are the training sub-folders, sorted
(class ``k`` is ``classes[k]``); the test set uses the same mapping.

Only the list of files is held in memory: an image is decoded when the dataset is
indexed, so a ``DataLoader`` with workers streams a 100,000-image folder in
bounded memory. Every file's header is read once at load time (size and colour
mode, not the pixels), so a file that is not an image or an image of another
size is reported before any work starts, not in the middle of an epoch.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "ImageFolderDataset",
    "load_image_folder",
    "ImageDecodeError",
    "IMAGE_EXTENSIONS",
]

#: File name endings read as images (lower case); other files are ignored.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# Pillow modes that hold one gray channel (the rest are read as RGB)
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


class ImageDecodeError(ValueError):
    """An image of a folder could not be decoded when the dataset was indexed."""


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError as exc:  # Pillow is an extra, not a core dependency
        raise ImportError(
            "image folders need Pillow: pip install 'pynsm[data]'"
        ) from exc
    return Image


class ImageFolderDataset(Dataset):
    """Images listed by path, decoded on access to ``[C, H, W]`` float32 in [0, 1].

    Built by :func:`load_image_folder`, which checks the files first.

    Attributes:
        paths: The image files, in class then file-name order.
        targets: ``int64 [N]`` class indices.
        classes: Class names; ``classes[k]`` is the sub-folder of class ``k``.
        image_shape: ``(C, H, W)`` of every image (``C`` 1 for gray, 3 for colour).
    """

    def __init__(
        self,
        paths: list[str],
        targets: torch.Tensor,
        classes: list[str],
        image_shape: tuple[int, int, int],
    ) -> None:
        self.paths = paths
        self.targets = targets
        self.classes = classes
        self.image_shape = image_shape

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = _pillow()
        path = self.paths[index]
        mode = "L" if self.image_shape[0] == 1 else "RGB"
        try:
            with image.open(path) as picture:
                pixels = _to_unit(picture, mode)
        except (OSError, ValueError) as exc:
            raise ImageDecodeError(f"cannot decode image {path!r}: {exc}") from exc
        tensor = torch.from_numpy(pixels)
        tensor = tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1)
        if tuple(tensor.shape) != self.image_shape:
            raise ImageDecodeError(
                f"image {path!r} decodes to {tuple(tensor.shape)}, not "
                f"{self.image_shape}"
            )
        return tensor.contiguous(), self.targets[index]


def _to_unit(picture: Any, mode: str) -> np.ndarray:
    # 16-bit and float gray images keep their range instead of being clipped to 8 bits
    if mode == "L" and picture.mode in ("I", "I;16", "I;16B", "I;16L"):
        return np.asarray(picture, dtype=np.float32) / 65535.0
    if mode == "L" and picture.mode == "F":
        return np.asarray(picture, dtype=np.float32)
    return np.asarray(picture.convert(mode), dtype=np.float32) / 255.0


def load_image_folder(
    root: str | os.PathLike[str],
) -> tuple[ImageFolderDataset, ImageFolderDataset]:
    """The ``train`` and ``test`` splits of an image folder.

    Args:
        root: Folder holding ``train/<class>/*`` and ``test/<class>/*``.

    Returns:
        ``(train, test)`` :class:`ImageFolderDataset`; gray images give 1
        channel, any colour image makes the whole dataset RGB (3 channels).

    Raises:
        FileNotFoundError: ``root``, ``root/train`` or ``root/test`` is missing.
        ValueError: fewer than 2 training classes, a class folder without images,
            a test class unknown to the training set, a file Pillow cannot
            read, or images of different sizes (the message names the file).
        ImportError: Pillow is not installed.

    Example:
        >>> import os, tempfile
        >>> from PIL import Image
        >>> from pynsm.data import load_image_folder
        >>> root = tempfile.mkdtemp()
        >>> for split in ("train", "test"):
        ...     for name in ("cat", "dog"):
        ...         os.makedirs(os.path.join(root, split, name))
        ...         path = os.path.join(root, split, name, "a.png")
        ...         Image.new("L", (5, 4)).save(path)
        >>> train, test = load_image_folder(root)
        >>> train.classes, len(train), tuple(train[0][0].shape)
        (['cat', 'dog'], 2, (1, 4, 5))
    """
    image = _pillow()
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder {root!r} does not exist")
    for split in ("train", "test"):
        if not os.path.isdir(os.path.join(root, split)):
            raise FileNotFoundError(
                f"image folder {root!r} has no {split!r} sub-folder (expected "
                f"{os.path.join(root, split, '<class>', '*.png')})"
            )
    classes = _class_names(os.path.join(root, "train"))
    if len(classes) < 2:
        raise ValueError(
            f"image folder {root!r}: the training set needs at least 2 class "
            f"sub-folders, found {classes or 'none'}"
        )
    unknown = sorted(set(_class_names(os.path.join(root, "test"))) - set(classes))
    if unknown:
        raise ValueError(
            f"image folder {root!r}: test classes {unknown} have no training folder"
        )
    splits = {}
    for split in ("train", "test"):
        splits[split] = _list(os.path.join(root, split), classes)
    sizes, gray = _headers(image, splits["train"][0] + splits["test"][0])
    height, width = sizes
    shape = (1 if gray else 3, height, width)
    train, test = (
        ImageFolderDataset(
            paths, torch.tensor(labels, dtype=torch.int64), classes, shape
        )
        for paths, labels in (splits["train"], splits["test"])
    )
    if len(test) == 0:
        raise ValueError(f"image folder {root!r}: the test split holds no images")
    return train, test


def _class_names(folder: str) -> list[str]:
    return sorted(
        entry.name
        for entry in os.scandir(folder)
        if entry.is_dir() and not entry.name.startswith(".")
    )


def _list(folder: str, classes: list[str]) -> tuple[list[str], list[int]]:
    paths: list[str] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        directory = os.path.join(folder, name)
        if not os.path.isdir(directory):
            continue  # a test split may lack a class
        files = sorted(
            entry.path
            for entry in os.scandir(directory)
            if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS)
        )
        if not files:
            raise ValueError(
                f"class folder {directory!r} holds no images "
                f"({', '.join(IMAGE_EXTENSIONS)})"
            )
        paths += files
        labels += [index] * len(files)
    return paths, labels


def _headers(image: Any, paths: list[str]) -> tuple[tuple[int, int], bool]:
    """One ``(H, W)`` for all files, and whether all are gray (headers only)."""
    size: tuple[int, int] | None = None
    first = ""
    gray = True
    for path in paths:
        try:
            with image.open(path) as picture:  # lazy: reads the header, not pixels
                width, height = picture.size
                mode = picture.mode
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read image {path!r}: {exc}") from exc
        if size is None:
            size, first = (height, width), path
        elif (height, width) != size:
            raise ValueError(
                f"images differ in size: {path!r} is {height}x{width} but "
                f"{first!r} is {size[0]}x{size[1]} (one size per dataset: resize "
                "the images first)"
            )
        gray = gray and mode in _GRAY_MODES
    assert size is not None  # the training set has at least two classes of images
    return size, gray
