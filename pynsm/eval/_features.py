"""Shared input checks and standardisation for the readouts of :mod:`pynsm.eval`."""

from __future__ import annotations

import torch
from torch import Tensor

#: Rows standardised at once: bounds the temporary memory of large feature sets.
_CHUNK = 4096


def check_features(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Features as CPU ``[N, D]`` tensors of ``dtype`` and labels as int64 ``[N]``."""
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
        if (
            labels.is_floating_point()
            or labels.is_complex()
            or labels.dtype == (torch.bool)
        ):
            raise TypeError(f"{name}_labels must be integers, got {labels.dtype}")
        if features.is_complex():
            raise TypeError(f"{name}_features must be real, got {features.dtype}")
        features = features.flatten(1).to(dtype)
        if not torch.isfinite(features).all():
            raise ValueError(f"{name}_features contain NaN or infinite values")
        out += [features, labels.long()]
    if out[0].shape[1] != out[2].shape[1]:
        raise ValueError(
            f"train and test features differ in width: {out[0].shape[1]} vs "
            f"{out[2].shape[1]}"
        )
    return out[0], out[1], out[2], out[3]


def feature_statistics(features: Tensor) -> tuple[Tensor, Tensor]:
    """Per-feature mean and standard deviation (clamped at 1e-8), in float64.

    Accumulated chunk by chunk in float64, so a large float32 matrix needs no
    float64 copy and the sums lose no precision.
    """
    total = torch.zeros(features.shape[1], dtype=torch.float64)
    for start in range(0, len(features), _CHUNK):
        total += features[start : start + _CHUNK].double().sum(0)
    mean = total / len(features)
    squares = torch.zeros_like(total)
    for start in range(0, len(features), _CHUNK):
        squares += (features[start : start + _CHUNK].double() - mean).square().sum(0)
    std = (squares / max(len(features) - 1, 1)).sqrt().clamp_min(1e-8)
    return mean, std


def standardize(features: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``(features - mean) / std`` as a new tensor of the features' dtype."""
    out = torch.empty_like(features)
    mean, std = mean.to(features.dtype), std.to(features.dtype)
    for start in range(0, len(features), _CHUNK):
        stop = start + _CHUNK
        torch.sub(features[start:stop], mean, out=out[start:stop])
        out[start:stop] /= std
    return out
