"""Embeddings extraction, linear probe and kNN accuracy."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pynsm.eval import extract_embeddings, knn_accuracy, linear_probe_accuracy


def test_extract_embeddings_concatenates_outputs_and_restores_mode():
    model = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5))
    x, labels = torch.randn(10, 4), torch.arange(10)
    loader = DataLoader(TensorDataset(x, labels), batch_size=4)
    seen = []
    result = extract_embeddings(model, loader, progress=lambda it: seen.append(1) or it)
    assert torch.allclose(result.output, model[0](x))  # eval mode: no dropout
    assert torch.equal(result.label, labels) and model.training and seen == [1]
    model.embed = lambda inp: 2 * model[0](inp)
    doubled = extract_embeddings(model, loader, progress=True, method="embed")
    assert torch.allclose(doubled.output, 2 * model[0](x))
    with pytest.raises(ValueError, match="no method"):
        extract_embeddings(model, loader, method="missing")


def test_knn_accuracy_weighted_vote_by_hand():
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    train_y = torch.tensor([0, 1, 1])
    test = torch.tensor([[0.6, 0.8]])
    # similarities 0.6 (class 0), 0.96 (class 1), 0.8 (class 1); k=2 keeps the last two
    assert knn_accuracy(train, train_y, test, torch.tensor([1]), k=2) == 1.0
    # with k=3 and a huge temperature the vote is a plain majority: class 1 again;
    # with class weights exp(s / T) the nearest class-0 sample alone cannot win
    assert knn_accuracy(train, train_y, test, torch.tensor([1]), k=3) == 1.0
    far = torch.tensor([[1.0, 0.05]])  # closest to class 0 (s = 0.9988) at k=1
    assert knn_accuracy(train, train_y, far, torch.tensor([0]), k=1) == 1.0
    w0, w1 = math.exp(0.9988 / 0.07), math.exp(0.8285 / 0.07) + math.exp(0.0499 / 0.07)
    assert w0 > w1  # so with k=3 the weighted vote still says 0
    assert knn_accuracy(train, train_y, far, torch.tensor([0]), k=3) == 1.0
    with pytest.raises(ValueError, match="k must"):
        knn_accuracy(train, train_y, test, torch.tensor([1]), k=0)


def test_linear_probe_separable_and_validation():
    pytest.importorskip("sklearn")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    assert linear_probe_accuracy(x[:150], y[:150], x[150:], y[150:], C=100.0) >= 0.96
    # labels independent of the features: chance level
    noise = torch.randint(0, 2, (200,), generator=g)
    assert linear_probe_accuracy(x[:150], noise[:150], x[150:], noise[150:]) < 0.75
    with pytest.raises(ValueError, match="train_labels"):
        linear_probe_accuracy(x, y[:10], x, y)
    with pytest.raises(ValueError, match="width"):
        linear_probe_accuracy(x, y, x[:, :3], y)
    with pytest.raises(TypeError, match="integers"):
        linear_probe_accuracy(x, y.float(), x, y)
