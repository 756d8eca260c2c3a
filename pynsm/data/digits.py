"""scikit-learn's bundled handwritten digits as train/test tensor datasets."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

__all__ = ["load_digits"]


def load_digits(
    test_fraction: float = 0.25, seed: int = 0
) -> tuple[TensorDataset, TensorDataset]:
    """The 1,797 8×8 digits of scikit-learn, split into train and test sets.

    The split is stratified by class and deterministic
    (``sklearn.model_selection.train_test_split`` with ``random_state=seed``): the
    default gives 1,347 training and 450 test images, the split on which pynsm's
    reference figures are quoted. Nothing is downloaded: the data ship with
    scikit-learn.

    Args:
        test_fraction: Fraction of the images held out for testing, in (0, 1).
        seed: Seed of the split.

    Returns:
        ``(train, test)``: datasets of ``(image, label)`` with images
        ``[1, 8, 8]`` float32 in [0, 1] and labels int64 in 0–9.

    Raises:
        ImportError: scikit-learn is not installed (``pip install "pynsm[data]"``).

    Example:
        >>> from pynsm.data import load_digits
        >>> train, test = load_digits()
        >>> len(train), len(test), tuple(train.tensors[0].shape[1:])
        (1347, 450, (1, 8, 8))
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    try:
        from sklearn.datasets import load_digits as sklearn_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:  # scikit-learn is an extra, not a core dependency
        raise ImportError(
            "the digits dataset needs scikit-learn: pip install 'pynsm[data]'"
        ) from exc
    digits = sklearn_digits()
    # pixel values are integers 0..16
    images = torch.as_tensor(digits.images, dtype=torch.float32).div_(16.0)
    labels = torch.as_tensor(digits.target, dtype=torch.int64)
    train_idx, test_idx = train_test_split(
        torch.arange(len(labels)).numpy(),
        test_size=test_fraction,
        stratify=labels.numpy(),
        random_state=seed,
    )
    train_idx, test_idx = torch.as_tensor(train_idx), torch.as_tensor(test_idx)
    images = images.unsqueeze(1)
    return (
        TensorDataset(images[train_idx], labels[train_idx]),
        TensorDataset(images[test_idx], labels[test_idx]),
    )
