"""Weighted k-nearest-neighbour readout in cosine similarity, computed in chunks."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pynsm.eval._features import check_features
from pynsm.validation import check_float, check_int

__all__ = ["knn_accuracy"]


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 512,
) -> float:
    """Test accuracy of a weighted k-nearest-neighbour vote in cosine similarity.

    Each test sample takes its ``k`` most cosine-similar training samples; each
    neighbour votes for its class with weight ``exp(similarity / temperature)``
    (Wu et al., 2018), and the class with the largest total wins. Test samples
    are processed ``chunk_size`` at a time in float32, so the memory beyond the
    features is ``chunk_size x N`` similarities.

    Args:
        train_features: ``[N, *]`` training features.
        train_labels: ``[N]`` integer labels (any integers).
        test_features: ``[M, *]`` test features.
        test_labels: ``[M]`` integer labels.
        k: Number of neighbours (clipped to ``N``).
        temperature: Softness of the vote weights (> 0).
        chunk_size: Test samples compared at once.

    Returns:
        The fraction of test samples classified correctly, in [0, 1].

    Example:
        >>> import torch
        >>> from pynsm.eval import knn_accuracy
        >>> x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> y = torch.tensor([0, 0, 1, 1])
        >>> knn_accuracy(x, y, x, y, k=2)
        1.0
    """
    try:
        k = check_int("k", k, minimum=1)
    except TypeError as exc:
        raise ValueError(str(exc)) from None  # k was always a ValueError here
    temperature = check_float("temperature", temperature, minimum=0.0, strict=True)
    chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    train_x, train_y, test_x, test_y = check_features(
        train_features, train_labels, test_features, test_labels
    )
    train_x = nn.functional.normalize(train_x, dim=1)
    # votes over the distinct training labels: a label of 10**9 needs no 10**9 bins
    classes, train_index = torch.unique(train_y, return_inverse=True)
    neighbours = min(k, len(train_x))
    correct = 0
    for start in range(0, len(test_x), chunk_size):
        queries = nn.functional.normalize(test_x[start : start + chunk_size], dim=1)
        top_sim, top_idx = (queries @ train_x.T).topk(neighbours, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(len(queries), len(classes), dtype=weights.dtype)
        votes.scatter_add_(1, train_index[top_idx], weights)
        predicted = classes[votes.argmax(1)]
        correct += int((predicted == test_y[start : start + chunk_size]).sum())
    return correct / len(test_x)
