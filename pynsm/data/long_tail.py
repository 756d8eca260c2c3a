"""Long-tailed subsets: power-law class counts drawn from a balanced training set.

Used to test the claim that PMSN's power-law prior helps on class-imbalanced data
(docs/mnist.md): the training split is cut down to a long tail, the test split
stays balanced, so accuracy on it weighs every class equally.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from pynsm.validation import check_float, check_int

__all__ = ["LONG_TAIL_SEED", "long_tailed_counts", "long_tailed_indices"]

#: Seed of the class order and of the images kept (fixed: every model sees the
#: same long tail).
LONG_TAIL_SEED = 0


def long_tailed_counts(
    class_sizes: Sequence[int], imbalance: float, seed: int = LONG_TAIL_SEED
) -> np.ndarray:
    """Power-law class counts with ``imbalance`` = largest / smallest count.

    The classes are put in a random order (``seed``); the class of rank ``r``
    (0, 1, ..., C - 1) keeps ``floor(n * (r + 1) ** -alpha)`` images, where ``n``
    is the smallest class size (so every class can supply its count) and ``alpha
    = log(imbalance) / log(C)``, so the last class keeps ``n / imbalance``. For
    MNIST (C = 10) and an imbalance of 100, ``alpha = 2``: counts ``n, n/4, n/9,
    ..., n/100``.

    Args:
        class_sizes: Images available per class, ``[C]`` (``C >= 2``).
        imbalance: Ratio of the largest to the smallest count, ``>= 1``.
        seed: Seed of the class order.

    Returns:
        ``[C]`` int64 counts, indexed by class (each at least 1).

    Example:
        >>> long_tailed_counts([100] * 3, imbalance=9, seed=0).tolist()
        [25, 11, 100]
    """
    sizes = np.asarray(class_sizes, dtype=np.int64)
    if sizes.ndim != 1 or len(sizes) < 2 or sizes.min() < 1:
        raise ValueError(
            f"class_sizes must list at least 2 positive counts, got {list(sizes)}"
        )
    imbalance = check_float("imbalance", imbalance, minimum=1.0)
    seed = check_int("seed", seed, minimum=0)
    if imbalance > sizes.min():
        raise ValueError(
            f"imbalance {imbalance:g} needs a class of at least {math.ceil(imbalance)}"
            f" images; the smallest has {sizes.min()}"
        )
    alpha = math.log(imbalance) / math.log(len(sizes))
    order = np.random.default_rng(seed).permutation(len(sizes))
    counts = np.empty(len(sizes), dtype=np.int64)
    for rank, cls in enumerate(order):
        # alpha comes from logs: 5421 * 10 ** -2 may land just below 54.21, so
        # a hair of slack keeps exact ratios from flooring one image short
        counts[cls] = max(1, math.floor(sizes.min() * (rank + 1) ** -alpha + 1e-9))
    return counts


def long_tailed_indices(
    labels: Sequence[int] | np.ndarray,
    imbalance: float = 100.0,
    seed: int = LONG_TAIL_SEED,
) -> np.ndarray:
    """Indices of a long-tailed subset of a labelled set (see
    :func:`long_tailed_counts`); within each class the images kept are drawn at
    random (``seed``).

    Args:
        labels: ``[N]`` integer class labels, ``0 .. C - 1``.
        imbalance: Largest / smallest class count.
        seed: Seed of the class order and of the draw.

    Returns:
        Sorted int64 indices into ``labels``.

    Example:
        >>> labels = np.repeat(np.arange(3), 100)
        >>> kept = long_tailed_indices(labels, imbalance=9)
        >>> np.bincount(labels[kept]).tolist()
        [25, 11, 100]
    """
    labels = np.asarray(labels)
    if (
        labels.ndim != 1
        or labels.size == 0
        or not np.issubdtype(labels.dtype, np.integer)
    ):
        raise ValueError("labels must be a non-empty 1-d array of integer classes")
    if labels.min() < 0:
        raise ValueError(f"labels must be >= 0, got {labels.min()}")
    sizes = np.bincount(labels)
    if (sizes == 0).any():
        missing = np.flatnonzero(sizes == 0).tolist()
        raise ValueError(f"labels has no image of class(es) {missing}")
    counts = long_tailed_counts(sizes, imbalance, seed)
    rng = np.random.default_rng(seed + 1)
    kept = [
        rng.choice(np.flatnonzero(labels == cls), size=count, replace=False)
        for cls, count in enumerate(counts)
    ]
    return np.sort(np.concatenate(kept)).astype(np.int64)
