"""Image datasets stored in ``.npz`` files (arrays ``images`` and ``labels``)."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import torch
from torch.utils.data import TensorDataset

__all__ = ["load_npz", "stratified_split"]


def load_npz(
    path: str | os.PathLike[str], test_fraction: float = 0.25, seed: int = 0
) -> tuple[TensorDataset, TensorDataset]:
    """Load an image classification dataset from a ``.npz`` file and split it.

    The file must hold ``images`` (``[N, H, W]`` or ``[N, C, H, W]``, any real
    dtype) and ``labels`` (``[N]`` integers ``>= 0``). Unsigned-integer images are
    scaled to [0, 1] by their dtype's maximum (``uint8``: 255); other images are
    kept as they are (as float32). The split is stratified by class and
    deterministic (:func:`stratified_split`).

    Args:
        path: The ``.npz`` file.
        test_fraction: Fraction of every class held out for testing, in (0, 1).
        seed: Seed of the split.

    Returns:
        ``(train, test)`` datasets of ``(image [C, H, W] float32, label int64)``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a readable ``.npz`` or its arrays are missing
            or malformed (the message says which).

    Example:
        >>> import numpy as np, os, tempfile
        >>> from pynsm.data import load_npz
        >>> path = os.path.join(tempfile.mkdtemp(), "toy.npz")
        >>> rng = np.random.default_rng(0)
        >>> np.savez(path, images=rng.integers(0, 256, (40, 6, 6), dtype=np.uint8),
        ...          labels=np.arange(40) % 4)
        >>> train, test = load_npz(path)
        >>> len(train), len(test), tuple(train.tensors[0].shape[1:])
        (32, 8, (1, 6, 6))
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"dataset file {path!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ValueError("not an .npz archive")
            missing = {"images", "labels"} - set(archive.files)
            if missing:
                raise ValueError(
                    f"missing array(s) {sorted(missing)}; found {sorted(archive.files)}"
                )
            images = archive["images"]
            labels = archive["labels"]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"{path!r} is not a valid dataset .npz: {exc}") from exc
    return _split_dataset(
        _check_images(images, path),
        _check_labels(labels, len(images), path),
        test_fraction,
        seed,
    )


def _check_images(images: np.ndarray, path: str) -> torch.Tensor:
    if images.ndim not in (3, 4):
        raise ValueError(
            f"{path!r}: images must be [N, H, W] or [N, C, H, W], got shape "
            f"{images.shape}"
        )
    if images.dtype.kind not in "uif" or images.dtype == np.bool_:
        raise ValueError(f"{path!r}: images must be numeric, got dtype {images.dtype}")
    if images.shape[0] < 2 or 0 in images.shape:
        raise ValueError(
            f"{path!r}: need at least 2 non-empty images, got {images.shape}"
        )
    if images.dtype.kind == "u":
        tensor = torch.from_numpy(
            images.astype(np.float32) / np.iinfo(images.dtype).max
        )
    else:
        tensor = torch.from_numpy(images.astype(np.float32))
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{path!r}: images contain NaN or infinite values")
    return tensor.unsqueeze(1) if tensor.dim() == 3 else tensor


def _check_labels(labels: np.ndarray, n: int, path: str) -> torch.Tensor:
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(
            f"{path!r}: labels must have shape [{n}] (one per image), "
            f"got {labels.shape}"
        )
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{path!r}: labels must be integers, got dtype {labels.dtype}")
    if labels.min() < 0:
        raise ValueError(f"{path!r}: labels must be >= 0, got {labels.min()}")
    return torch.from_numpy(labels.astype(np.int64))


def stratified_split(
    labels: torch.Tensor, test_fraction: float = 0.25, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic stratified split of indices ``0..N-1``.

    Every class with ``n`` members contributes ``round(n * test_fraction)`` of them
    (at least one when ``n >= 2``, never all) to the test set, chosen by a
    permutation drawn from ``seed``.

    Args:
        labels: ``[N]`` integer labels.
        test_fraction: In (0, 1).
        seed: Seed of the permutation.

    Returns:
        ``(train_idx, test_idx)``, sorted int64 tensors.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    generator = torch.Generator().manual_seed(seed)
    train, test = [], []
    for cls in torch.unique(labels):
        members = torch.nonzero(labels == cls).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_test = int(round(len(members) * test_fraction))
        if len(members) >= 2:
            n_test = min(max(n_test, 1), len(members) - 1)
        else:
            n_test = 0
        test.append(members[:n_test])
        train.append(members[n_test:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def _split_dataset(
    images: torch.Tensor, labels: torch.Tensor, test_fraction: float, seed: int
) -> tuple[TensorDataset, TensorDataset]:
    train_idx, test_idx = stratified_split(labels, test_fraction, seed)
    if len(test_idx) == 0:
        raise ValueError("the dataset is too small to hold out a test set")
    return (
        TensorDataset(images[train_idx], labels[train_idx]),
        TensorDataset(images[test_idx], labels[test_idx]),
    )
