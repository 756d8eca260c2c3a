"""A .npz that keeps its own train/test split, and float pixels beyond float32."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from pynsm.data import load_npz


def test_kept_split_with_one_label_mapping(tmp_path):
    path = tmp_path / "kept.npz"
    np.savez(
        path,
        train_images=np.zeros((6, 1, 4, 4), np.uint8),
        train_labels=np.array([3, 7, 3, 7, 3, 7], np.int16),
        test_images=np.ones((3, 1, 4, 4), np.uint8),
        test_labels=np.array([9, 7, 3], np.int64),
    )
    train, test = load_npz(path)
    assert (len(train), len(test), train.split) == (6, 3, "standard")
    assert train.classes.tolist() == [3, 7, 9]
    assert train.tensors[1].tolist() == [0, 1, 0, 1, 0, 1]
    assert test.tensors[1].tolist() == [2, 1, 0]
    assert float(test.tensors[0].max()) == pytest.approx(1 / 255)


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"test_images": np.zeros((2, 5, 5))}, "differ in image shape"),
        ({"test_labels": np.array([0.5, 1.0])}, "must be integers"),
        ({"train_labels": np.arange(5)}, "labels must have shape \\[4\\]"),
    ],
)
def test_kept_split_errors(tmp_path, arrays, match):
    base = {
        "train_images": np.zeros((4, 4, 4), np.uint8),
        "train_labels": np.arange(4) % 2,
        "test_images": np.zeros((2, 4, 4), np.uint8),
        "test_labels": np.array([0, 1]),
    }
    base.update(arrays)
    np.savez(tmp_path / "bad.npz", **base)
    with pytest.raises(ValueError, match=match):
        load_npz(tmp_path / "bad.npz")


def test_images_and_kept_split_together_is_ambiguous(tmp_path):
    np.savez(
        tmp_path / "both.npz",
        images=np.zeros((4, 4, 4)),
        train_images=np.zeros((4, 4, 4)),
        train_labels=np.arange(4),
        test_images=np.zeros((4, 4, 4)),
        test_labels=np.arange(4),
    )
    with pytest.raises(ValueError, match="missing array\\(s\\) \\['labels'\\]"):
        load_npz(tmp_path / "both.npz")


def test_float64_beyond_float32_is_refused_without_a_warning(tmp_path):
    images = np.zeros((4, 3, 3))
    images[1, 0, 0] = 1e39  # inf in float32: NumPy would warn when casting
    np.savez(tmp_path / "big.npz", images=images, labels=np.arange(4) % 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="pixel values reach 1e\\+39"):
            load_npz(tmp_path / "big.npz")
