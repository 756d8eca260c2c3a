"""kNN readout: the weighted vote by hand, chunking, arbitrary labels."""

from __future__ import annotations

import math

import pytest
import torch

from pynsm.eval import knn_accuracy


def test_knn_accuracy_weighted_vote_by_hand():
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    train_y = torch.tensor([0, 1, 1])
    test = torch.tensor([[0.6, 0.8]])
    # similarities 0.6 (class 0), 0.96 (class 1), 0.8 (class 1); k=2 keeps the last two
    assert knn_accuracy(train, train_y, test, torch.tensor([1]), k=2) == 1.0
    assert knn_accuracy(train, train_y, test, torch.tensor([1]), k=3) == 1.0
    far = torch.tensor([[1.0, 0.05]])  # closest to class 0 (s = 0.9988) at k=1
    assert knn_accuracy(train, train_y, far, torch.tensor([0]), k=1) == 1.0
    w0, w1 = math.exp(0.9988 / 0.07), math.exp(0.8285 / 0.07) + math.exp(0.0499 / 0.07)
    assert w0 > w1  # so with k=3 the weighted vote still says 0
    assert knn_accuracy(train, train_y, far, torch.tensor([0]), k=3) == 1.0
    # a large temperature makes the vote a plain majority: class 1 wins
    assert (
        knn_accuracy(train, train_y, far, torch.tensor([1]), k=3, temperature=1e3)
        == 1.0
    )
    with pytest.raises(ValueError, match="k must"):
        knn_accuracy(train, train_y, test, torch.tensor([1]), k=0)
    with pytest.raises(ValueError, match="temperature"):
        knn_accuracy(train, train_y, test, torch.tensor([1]), temperature=0.0)


def test_chunks_do_not_change_the_answer_and_labels_can_be_anything():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(300) % 3
    x = torch.randn(300, 8, generator=g) + 2.0 * torch.eye(8)[y]
    whole = knn_accuracy(x[:200], y[:200], x[200:], y[200:], chunk_size=1000)
    chunked = knn_accuracy(x[:200], y[:200], x[200:], y[200:], chunk_size=7)
    assert whole == chunked > 0.7
    # labels 10**12 apart vote exactly like 0, 1, 2 (no one-hot of that width)
    big = y * 10**12 - 5
    assert knn_accuracy(x[:200], big[:200], x[200:], big[200:]) == whole


def test_separable_clusters_and_shuffled_labels():
    g = torch.Generator().manual_seed(1)
    y = torch.arange(400) % 4
    centres = 10 * torch.randn(4, 16, generator=g)
    x = centres[y] + torch.randn(400, 16, generator=g)
    assert knn_accuracy(x[:300], y[:300], x[300:], y[300:]) == 1.0
    shuffled = y[torch.randperm(400, generator=g)]
    assert knn_accuracy(x[:300], shuffled[:300], x[300:], shuffled[300:]) < 0.45
