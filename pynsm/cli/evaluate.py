"""Readouts reported by ``pynsm train``: k-shot and all-label probes, kNN.

Three feature sets are read out with the same split: the trained model, the same
model at its random initialisation (how much training adds), and the raw pixels
(what any model has to beat). Features are streamed in batches into one float32
array; the probes switch to a torch solver for large data (:mod:`pynsm.eval`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from pynsm.eval import (
    extract_embeddings,
    fewshot_probe_accuracy,
    knn_accuracy,
    linear_probe_accuracy,
)

__all__ = [
    "embed",
    "readouts",
    "pixel_readouts",
    "epoch_knn",
    "circuit_accuracy",
    "SHOTS",
    "EMBED_BATCH",
    "KNN_TRAIN",
    "KNN_TEST",
    "EPOCH_KNN_TRAIN",
    "EPOCH_KNN_TEST",
]

#: The k of the k-shot probes (labelled images per class).
SHOTS = (1, 5)
#: Images embedded at once: small batches keep a convolution's feature maps in
#: the CPU cache (measured on 28x28 images: 0.33 ms an image for the circuits at
#: 64, 0.7 ms at 256; the SSL models are also fastest around 64).
EMBED_BATCH = 64
#: kNN compares every test image with every training image (cost N x M x D), so
#: on large datasets it runs on an evenly spaced subset of at most this many
#: training / test images: 10,000 x 2,000 keeps it to seconds at 60,000 images.
KNN_TRAIN = 10_000
KNN_TEST = 2_000
#: The per-epoch kNN of the history embeds its own subset after every epoch, so
#: it is kept small: at most 1,000 training / 300 test images (about 3% of an
#: epoch of a 60,000-image dataset; about one epoch's work on digits, whose training
#: set is 1,347 images).
EPOCH_KNN_TRAIN = 1_000
EPOCH_KNN_TEST = 300


def embed(
    task: nn.Module, data: TensorDataset, batch_size: int = EMBED_BATCH
) -> tuple[Tensor, Tensor]:
    """``[N, D]`` float32 features of ``task.embed`` and the ``[N]`` labels."""
    loader = DataLoader(data, batch_size=batch_size)
    result = extract_embeddings(task, loader, method="embed", dtype=torch.float32)
    return result.output.flatten(1), result.label


def readouts(
    train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], probe_c: float
) -> dict[str, Any]:
    """k-shot accuracies, the all-label linear probe and kNN on one feature set.

    The probes use every image; kNN an evenly spaced subset on large datasets
    (:data:`KNN_TRAIN`, :data:`KNN_TEST`).

    Non-finite features (a model that blew up) give no readout: ``None`` values.
    """
    if not (torch.isfinite(train[0]).all() and torch.isfinite(test[0]).all()):
        return {"fewshot": None, "linear": None, "knn": None}
    fewshot = fewshot_probe_accuracy(*train, *test, shots=_shots(train[1]))
    return {
        "fewshot": {str(k): v for k, v in fewshot.items()},
        "linear": linear_probe_accuracy(*train, *test, C=probe_c),
        "knn": knn_accuracy(*_rows(train, KNN_TRAIN), *_rows(test, KNN_TEST)),
    }


def pixel_readouts(
    train_set: TensorDataset, test_set: TensorDataset, probe_c: float
) -> dict[str, Any]:
    """The readouts of the raw pixels (images as the model sees them, in [0, 1]).

    The k-shot probe reads the pixels unstandardised: they share one unit
    already, and standardising would blow up near-constant border pixels and
    weaken the baseline (digits: 60.0% / 84.4% instead of 64.7% / 86.5%). The
    all-label probe standardises as for every feature set.
    """
    train = (train_set.tensors[0].flatten(1), train_set.tensors[1])
    test = (test_set.tensors[0].flatten(1), test_set.tensors[1])
    fewshot = fewshot_probe_accuracy(
        *train, *test, shots=_shots(train[1]), standardize=False
    )
    return {
        "fewshot": {str(k): v for k, v in fewshot.items()},
        "linear": linear_probe_accuracy(*train, *test, C=probe_c),
        "knn": knn_accuracy(*_rows(train, KNN_TRAIN), *_rows(test, KNN_TEST)),
    }


def epoch_knn(
    train_set: TensorDataset, test_set: TensorDataset
) -> Callable[[nn.Module], Mapping[str, float]]:
    """The Trainer's ``epoch_metrics``: kNN accuracy on a fixed subset, each epoch."""
    train = _subset(train_set, EPOCH_KNN_TRAIN)
    test = _subset(test_set, EPOCH_KNN_TEST)

    def metrics(task: nn.Module) -> Mapping[str, float]:
        train_features, test_features = embed(task, train), embed(task, test)
        if not (
            torch.isfinite(train_features[0]).all()
            and torch.isfinite(test_features[0]).all()
        ):
            return {"knn_accuracy": float("nan")}
        return {"knn_accuracy": knn_accuracy(*train_features, *test_features)}

    return metrics


def circuit_accuracy(task: nn.Module, data: TensorDataset) -> float | None:
    """Test accuracy of the (top) circuit's own ``predict``, or ``None`` when it
    has none (an unsupervised circuit, or a stack of them)."""
    predict = getattr(getattr(task, "circuit", None), "predict", None)
    if not callable(predict):
        return None
    if callable(getattr(task, "predict", None)):
        predict = task.predict  # a stack runs x through the layers below first
    device = next(task.parameters()).device
    was_training = task.training
    task.eval()
    correct = 0
    try:
        with torch.no_grad():
            for x, labels in DataLoader(data, batch_size=EMBED_BATCH):
                predicted = predict(x.to(device)).cpu()
                correct += int((predicted == labels).sum())
    finally:
        task.train(was_training)
    return correct / len(data)


def _shots(labels: Tensor) -> tuple[int, ...]:
    # a class with fewer than 5 training images cannot be read out 5-shot
    fewest = int(torch.unique(labels, return_counts=True)[1].min())
    return tuple(k for k in SHOTS if k <= fewest)


def _spaced(length: int, limit: int) -> Tensor | None:
    # evenly spaced rows: deterministic; the split keeps the dataset's order, so
    # for a dataset stored in random order the subset is a fair sample
    if length <= limit:
        return None
    return torch.linspace(0, length - 1, limit).long()


def _rows(pair: tuple[Tensor, Tensor], limit: int) -> tuple[Tensor, Tensor]:
    index = _spaced(len(pair[0]), limit)
    return pair if index is None else (pair[0][index], pair[1][index])


def _subset(data: TensorDataset, limit: int) -> TensorDataset:
    index = _spaced(len(data), limit)
    if index is None:
        return data
    return TensorDataset(*(tensor[index] for tensor in data.tensors))
