"""Image datasets stored in ``.npz`` files (``images``/``labels``, or a kept split)."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import torch
from torch.utils.data import TensorDataset

__all__ = ["load_npz", "stratified_split", "MAX_PIXEL"]

# the arrays of a file that keeps its own train/test split
_SPLIT_KEYS = {"train_images", "train_labels", "test_images", "test_labels"}

#: Largest pixel magnitude accepted in float images (beyond it float32 overflows).
MAX_PIXEL = 1e6


def load_npz(
    path: str | os.PathLike[str], test_fraction: float = 0.25, seed: int = 0
) -> tuple[TensorDataset, TensorDataset]:
    """Load an image classification dataset from a ``.npz`` file and split it.

    The file holds either ``images`` and ``labels`` (``np.savez(path,
    images=..., labels=...)``), split here into train and test, or
    ``train_images``, ``train_labels``, ``test_images`` and ``test_labels``,
    whose split is kept as it is (``test_fraction`` and ``seed`` are then
    unused). A ``.npy`` file or a pickle is refused. The rules, checked for
    every array before anything is returned:

    * **layout**: ``[N, H, W]`` (gray) or ``[N, C, H, W]`` (channels first). An
      array that looks channels-last, ``[N, H, W, C]`` with ``C`` in 1, 3 or 4
      and ``H, W > 4``, is refused with a message showing the transpose to apply
      (guessing would silently train on scrambled images when ``H == C``).
    * **pixels**: any real dtype. Unsigned-integer images are scaled to [0, 1] by
      their dtype's maximum (``uint8``: 255); other images are kept as they are
      (as float32) and must be finite with ``|x| <= 1e6`` (larger values overflow
      float32 inside the models: rescale such data first).
    * **labels**: ``[N]`` integers of any integer dtype, negative or huge values
      included. The distinct values, sorted, are mapped to classes ``0..K-1``
      (labels already equal to ``0..K-1`` are unchanged, ``{3, 7}`` becomes
      ``{0, 1}``); the original values are kept as ``dataset.classes`` on both
      returned datasets (a NumPy array, ``classes[k]`` = original label of
      class ``k``). Floating-point or boolean labels are refused.
    * **size**: at least 2 images, every dimension non-empty, and enough images
      to hold out a test set.

    The split of an ``images``/``labels`` file is stratified by class and
    deterministic (:func:`stratified_split`); the class mapping of a kept split
    covers the labels of both parts.

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
        ...          labels=10 * (np.arange(40) % 4))
        >>> train, test = load_npz(path)
        >>> len(train), len(test), tuple(train.tensors[0].shape[1:])
        (32, 8, (1, 6, 6))
        >>> train.classes.tolist(), sorted(set(train.tensors[1].tolist()))
        ([0, 10, 20, 30], [0, 1, 2, 3])
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"dataset file {path!r} does not exist")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"{path!r} is not a valid dataset .npz: {exc}") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(
            f"{path!r} holds a single array (a .npy file), not an .npz archive: "
            "save the dataset with np.savez(path, images=..., labels=...)"
        )
    kept = None
    try:
        with archive:
            keys = set(archive.files)
            if _SPLIT_KEYS <= keys and not keys & {"images", "labels"}:
                kept = {key: archive[key] for key in _SPLIT_KEYS}
            missing = {"images", "labels"} - keys
            if kept is None and missing:
                raise ValueError(
                    f"missing array(s) {sorted(missing)}; found {sorted(keys)} "
                    "(expected images/labels, or train_images/train_labels/"
                    "test_images/test_labels)"
                )
            if kept is None:
                images = archive["images"]
                labels = archive["labels"]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"{path!r} is not a valid dataset .npz: {exc}") from exc
    if kept is not None:
        return _kept_split(kept, path)
    tensor = _check_images(images, path)
    classes, targets = _check_labels(labels, len(images), path)
    train, test = _split_dataset(tensor, targets, test_fraction, seed)
    train.classes = test.classes = classes  # type: ignore[attr-defined]
    return train, test


def _kept_split(
    arrays: dict[str, np.ndarray], path: str
) -> tuple[TensorDataset, TensorDataset]:
    """The file's own train/test split; one label mapping over both."""
    train_images = _check_images(arrays["train_images"], f"{path}: train_images")
    test_images = _check_images(arrays["test_images"], f"{path}: test_images")
    if train_images.shape[1:] != test_images.shape[1:]:
        raise ValueError(
            f"{path!r}: train_images and test_images differ in image shape: "
            f"{tuple(train_images.shape[1:])} vs {tuple(test_images.shape[1:])}"
        )
    train_labels, test_labels = arrays["train_labels"], arrays["test_labels"]
    for name, labels, n in (
        ("train_labels", train_labels, len(train_images)),
        ("test_labels", test_labels, len(test_images)),
    ):
        _check_labels(labels, n, f"{path}: {name}")
    if train_labels.dtype != test_labels.dtype:
        # np.unique over one common dtype: promote only when they differ
        common = np.promote_types(train_labels.dtype, test_labels.dtype)
        if common.kind not in "iu":
            raise ValueError(
                f"{path!r}: train_labels ({train_labels.dtype}) and test_labels "
                f"({test_labels.dtype}) have no common integer type"
            )
        train_labels, test_labels = (
            train_labels.astype(common),
            test_labels.astype(common),
        )
    classes, index = _check_labels(
        np.concatenate([train_labels, test_labels]),
        len(train_labels) + len(test_labels),
        path,
    )
    split = len(train_labels)
    train = TensorDataset(train_images, index[:split])
    test = TensorDataset(test_images, index[split:])
    train.split = test.split = "standard"  # type: ignore[attr-defined]
    train.classes = test.classes = classes  # type: ignore[attr-defined]
    return train, test


def _check_images(images: np.ndarray, path: str) -> torch.Tensor:
    if images.ndim not in (3, 4):
        raise ValueError(
            f"{path!r}: images must be [N, H, W] or [N, C, H, W], got shape "
            f"{images.shape}"
        )
    if images.ndim == 4 and images.shape[3] in (1, 3, 4) and min(images.shape[1:3]) > 4:
        raise ValueError(
            f"{path!r}: images of shape {images.shape} look channels-last "
            "[N, H, W, C]; pynsm expects [N, C, H, W]: save "
            "images.transpose(0, 3, 1, 2) instead"
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
        # checked in the file's own dtype, before the cast: a float64 1e39 would
        # become inf in float32 (with a NumPy overflow warning) before any check
        if not np.isfinite(images).all():
            raise ValueError(f"{path!r}: images contain NaN or infinite values")
        largest = max(abs(float(images.max())), abs(float(images.min())))
        if largest > MAX_PIXEL:
            raise ValueError(
                f"{path!r}: pixel values reach {largest:.3g}; pynsm accepts |x| <= "
                f"{MAX_PIXEL:.0e} (larger values overflow float32 in the models): "
                "rescale the images"
            )
        tensor = torch.from_numpy(images.astype(np.float32))
    return tensor.unsqueeze(1) if tensor.dim() == 3 else tensor


def _check_labels(
    labels: np.ndarray, n: int, path: str
) -> tuple[np.ndarray, torch.Tensor]:
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(
            f"{path!r}: labels must have shape [{n}] (one per image), "
            f"got {labels.shape}"
        )
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{path!r}: labels must be integers, got dtype {labels.dtype}")
    # np.unique works in the labels' own dtype: uint64 values >= 2**63 do not
    # wrap, and a label of 10**9 costs nothing (no one-hot of that width)
    classes, index = np.unique(labels, return_inverse=True)
    return classes, torch.from_numpy(index.reshape(-1).astype(np.int64))


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
