"""Reader of the binary release of CIFAR-10 and CIFAR-100 (never the pickled one).

The binary release stores fixed-size records, one per image, and nothing else::

    CIFAR-10:  <1 byte label 0-9> <3072 bytes pixels>
    CIFAR-100: <1 byte coarse label 0-19> <1 byte fine label 0-99> <3072 bytes>

The 3072 pixel bytes are the red, green and blue 32x32 planes in row-major order,
which is exactly a ``[3, 32, 32]`` channels-first image. The files are
``cifar-10-batches-bin/data_batch_{1..5}.bin`` and ``test_batch.bin``, and
``cifar-100-binary/train.bin`` and ``test.bin``. The "python version" of the same
data is pickled; unpickling downloaded data can run arbitrary code, so pynsm does
not read it.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["read_cifar_binary", "write_cifar_binary", "IMAGE_BYTES"]

#: Bytes of one 3x32x32 uint8 image.
IMAGE_BYTES = 3 * 32 * 32


def read_cifar_binary(
    path: str | os.PathLike[str], label_bytes: int = 1, num_classes: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR binary file.

    Args:
        path: A ``.bin`` file of the binary release.
        label_bytes: 1 for CIFAR-10; 2 for CIFAR-100 (coarse, then fine label:
            the fine label is returned).
        num_classes: Labels must lie in ``0..num_classes-1``.

    Returns:
        ``(images, labels)``: ``uint8 [N, 3, 32, 32]`` and ``int64 [N]``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the size is not a whole number of records (a truncated file)
            or a label is out of range.

    Example:
        >>> import numpy as np, os, tempfile
        >>> from pynsm.data.cifar import read_cifar_binary, write_cifar_binary
        >>> path = os.path.join(tempfile.mkdtemp(), "test_batch.bin")
        >>> write_cifar_binary(path, np.zeros((5, 3, 32, 32), np.uint8),
        ...                    np.array([0, 1, 2, 3, 9]))
        >>> images, labels = read_cifar_binary(path)
        >>> images.shape, labels.tolist()
        ((5, 3, 32, 32), [0, 1, 2, 3, 9])
    """
    path = os.fspath(path)
    if label_bytes not in (1, 2):
        raise ValueError(f"label_bytes must be 1 or 2, got {label_bytes!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CIFAR file {path!r} does not exist")
    raw = np.fromfile(path, dtype=np.uint8)
    record = label_bytes + IMAGE_BYTES
    if raw.size == 0 or raw.size % record:
        raise ValueError(
            f"{path!r}: {raw.size} bytes is not a whole number of {record}-byte "
            "CIFAR records (a truncated or foreign file)"
        )
    records = raw.reshape(-1, record)
    labels = records[:, label_bytes - 1].astype(np.int64)
    if labels.max() >= num_classes:
        raise ValueError(
            f"{path!r}: label {int(labels.max())} out of range 0..{num_classes - 1}"
        )
    images = records[:, label_bytes:].reshape(-1, 3, 32, 32)
    return np.ascontiguousarray(images), labels


def write_cifar_binary(
    path: str | os.PathLike[str],
    images: np.ndarray,
    labels: np.ndarray,
    coarse_labels: np.ndarray | None = None,
) -> None:
    """Write ``uint8 [N, 3, 32, 32]`` images in the CIFAR binary format.

    With ``coarse_labels`` the records are CIFAR-100's (coarse, fine, pixels).
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[1:] != (3, 32, 32):
        raise ValueError(
            f"images must be uint8 [N, 3, 32, 32], got {images.dtype} {images.shape}"
        )
    columns = [np.asarray(labels, np.uint8).reshape(-1, 1)]
    if coarse_labels is not None:
        columns.insert(0, np.asarray(coarse_labels, np.uint8).reshape(-1, 1))
    columns.append(images.reshape(len(images), -1))
    np.concatenate(columns, axis=1).tofile(os.fspath(path))
