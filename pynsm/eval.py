"""Evaluate learned representations: embeddings, linear probe and kNN accuracy."""

from __future__ import annotations

from collections.abc import Iterable
from types import SimpleNamespace
from typing import Callable, Union

import torch
from torch import Tensor, nn

__all__ = ["extract_embeddings", "linear_probe_accuracy", "knn_accuracy"]

Progress = Union[bool, Callable[[Iterable], Iterable], None]


def extract_embeddings(
    model: nn.Module,
    loader: Iterable,
    progress: Progress = False,
    *,
    method: str | None = None,
) -> SimpleNamespace:
    """Run ``model`` over a labelled dataset and collect its outputs and the labels.

    The model is put in evaluation mode for the pass (and back afterwards); inputs
    go to the device of the model's first parameter; outputs are detached and
    gathered on the CPU. The labels are never shown to the model.

    Args:
        model: The module producing embeddings (a circuit, a backbone, a task).
        loader: Iterable of ``(x, label)`` batches, e.g. a ``DataLoader``.
        progress: ``True`` for a tqdm bar, or a tqdm-like callable wrapping the
            loader; ``False``/``None`` for none.
        method: Name of the model's method to call instead of ``forward``
            (e.g. ``"embed"`` for a task of :mod:`pynsm.train`).

    Returns:
        A namespace with ``output`` (the concatenated outputs, ``[N, *]``) and
        ``label`` (``[N]``).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from pynsm.eval import extract_embeddings
        >>> data = TensorDataset(torch.randn(10, 4), torch.arange(10) % 2)
        >>> result = extract_embeddings(nn.Linear(4, 3), DataLoader(data, batch_size=4))
        >>> result.output.shape, result.label.shape
        (torch.Size([10, 3]), torch.Size([10]))
    """
    function = model if method is None else getattr(model, method, None)
    if not callable(function):
        raise ValueError(f"model {type(model).__name__} has no method {method!r}")
    if progress is True:
        from tqdm.auto import tqdm

        iterable = tqdm(loader, desc="embed", unit="batch")
    elif callable(progress):
        iterable = progress(loader)
    else:
        iterable = loader
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    outputs, labels = [], []
    try:
        for batch in iterable:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise ValueError("loader must yield (x, label) batches")
            x, label = batch[0], batch[1]
            outputs.append(function(x.to(device)).detach().cpu())
            labels.append(torch.as_tensor(label).detach().cpu())
    finally:
        model.train(was_training)
    if not outputs:
        raise ValueError("loader yielded no batches")
    return SimpleNamespace(output=torch.cat(outputs), label=torch.cat(labels))


def linear_probe_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    C: float = 1.0,
    standardize: bool = True,
    max_iter: int = 2000,
) -> float:
    """Test accuracy of a multinomial logistic regression fit on the train features.

    Features are flattened to ``[N, D]``; with ``standardize`` each feature is
    centred and scaled by its training-set mean and standard deviation first.
    Uses scikit-learn's ``LogisticRegression`` (L2 penalty of strength ``1 / C``).

    Args:
        train_features: ``[N, *]`` training features.
        train_labels: ``[N]`` integer labels.
        test_features: ``[M, *]`` test features.
        test_labels: ``[M]`` integer labels.
        C: Inverse regularisation strength.
        standardize: Standardise features with the training statistics.
        max_iter: Maximum solver iterations.

    Returns:
        The fraction of test samples classified correctly, in [0, 1].

    Raises:
        ImportError: scikit-learn is not installed (``pip install "pynsm[data]"``).

    Example:
        >>> import torch
        >>> from pynsm.eval import linear_probe_accuracy
        >>> x = torch.randn(40, 2); y = (x[:, 0] > 0).long()
        >>> linear_probe_accuracy(x, y, x, y) > 0.9
        True
    """
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError as exc:  # scikit-learn is an extra, not a core dependency
        raise ImportError(
            "linear_probe_accuracy needs scikit-learn: pip install 'pynsm[data]'"
        ) from exc
    train_x, train_y, test_x, test_y = _check_features(
        train_features, train_labels, test_features, test_labels
    )
    if standardize:
        mean = train_x.mean(0)
        std = train_x.std(0).clamp_min(1e-8)
        train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    classifier = LogisticRegression(C=C, max_iter=max_iter)
    classifier.fit(train_x.numpy(), train_y.numpy())
    return float(classifier.score(test_x.numpy(), test_y.numpy()))


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Test accuracy of a weighted k-nearest-neighbour vote in cosine similarity.

    Each test sample takes its ``k`` most cosine-similar training samples; each
    neighbour votes for its class with weight ``exp(similarity / temperature)``
    (Wu et al., 2018), and the class with the largest total wins.

    Args:
        train_features: ``[N, *]`` training features.
        train_labels: ``[N]`` integer labels.
        test_features: ``[M, *]`` test features.
        test_labels: ``[M]`` integer labels.
        k: Number of neighbours (clipped to ``N``).
        temperature: Softness of the vote weights (> 0).

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
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature!r}")
    train_x, train_y, test_x, test_y = _check_features(
        train_features, train_labels, test_features, test_labels
    )
    train_x = nn.functional.normalize(train_x, dim=1)
    test_x = nn.functional.normalize(test_x, dim=1)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    correct = 0
    for start in range(0, len(test_x), 1024):  # bounded memory for large test sets
        similarity = test_x[start : start + 1024] @ train_x.T
        top_sim, top_idx = similarity.topk(min(k, len(train_x)), dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(len(top_idx), num_classes, dtype=weights.dtype)
        votes.scatter_add_(1, train_y[top_idx], weights)
        correct += int((votes.argmax(1) == test_y[start : start + 1024]).sum())
    return correct / len(test_x)


def _check_features(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    pairs = (
        ("train", train_features, train_labels),
        ("test", test_features, test_labels),
    )
    out = []
    for name, features, labels in pairs:
        features = torch.as_tensor(features).detach().cpu()
        labels = torch.as_tensor(labels).detach().cpu()
        if features.dim() < 2 or len(features) == 0:
            raise ValueError(
                f"{name}_features must be [N, D] with N > 0, "
                f"got {tuple(features.shape)}"
            )
        if labels.shape != (len(features),):
            raise ValueError(
                f"{name}_labels must have shape [{len(features)}], got "
                f"{tuple(labels.shape)}"
            )
        if labels.is_floating_point() or labels.is_complex():
            raise TypeError(f"{name}_labels must be integers, got {labels.dtype}")
        out += [features.flatten(1).double(), labels.long()]
    if out[0].shape[1] != out[2].shape[1]:
        raise ValueError(
            f"train and test features differ in width: {out[0].shape[1]} vs "
            f"{out[2].shape[1]}"
        )
    return out[0], out[1], out[2], out[3]
