"""Digits and .npz loaders: determinism, stratification, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pynsm.data import load_digits, load_npz, stratified_split

pytest.importorskip("sklearn")


def test_digits_split_is_deterministic_stratified_and_normalised():
    train, test = load_digits()
    again_train, again_test = load_digits()
    assert torch.equal(train.tensors[0], again_train.tensors[0])
    assert torch.equal(test.tensors[1], again_test.tensors[1])
    x, y = train.tensors
    assert x.shape == (1347, 1, 8, 8) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and len(test) == 450
    assert x.min() == 0 and x.max() == 1
    # stratified: every class keeps its share (to within one image)
    all_labels = torch.cat([y, test.tensors[1]])
    for cls in range(10):
        n = int((all_labels == cls).sum())
        assert abs(int((test.tensors[1] == cls).sum()) - 0.25 * n) <= 1
    # train and test are disjoint: no test image occurs in the training set
    flat_train = {tuple(row.tolist()) for row in x.flatten(1)}
    duplicates = sum(
        tuple(r.tolist()) in flat_train for r in test.tensors[0].flatten(1)
    )
    assert duplicates <= 2  # the digits data itself holds a few identical images
    other, _ = load_digits(seed=1)
    assert not torch.equal(other.tensors[1], y)


def test_stratified_split_partitions_every_class():
    labels = torch.tensor([0] * 8 + [1] * 4 + [2] * 2 + [3])
    train_idx, test_idx = stratified_split(labels, 0.25, seed=0)
    assert sorted(torch.cat([train_idx, test_idx]).tolist()) == list(range(15))
    assert [int((labels[test_idx] == c).sum()) for c in range(4)] == [2, 1, 1, 0]
    assert torch.equal(stratified_split(labels, 0.25, seed=0)[1], test_idx)
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_split(labels, 1.0)


def test_npz_gray_and_channel_images(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (20, 5, 7), dtype=np.uint8)
    np.savez(tmp_path / "gray.npz", images=gray, labels=np.arange(20) % 2)
    train, test = load_npz(tmp_path / "gray.npz")
    assert train.tensors[0].shape[1:] == (1, 5, 7) and len(train) + len(test) == 20
    all_x = torch.cat([train.tensors[0], test.tensors[0]])
    assert torch.allclose(
        all_x.sum(), torch.tensor(gray.sum() / 255.0, dtype=torch.float32)
    )
    color = rng.normal(size=(12, 3, 4, 4)).astype(np.float64)
    np.savez(tmp_path / "color.npz", images=color, labels=np.arange(12) % 3)
    train, _ = load_npz(tmp_path / "color.npz")
    assert train.tensors[0].shape[1:] == (3, 4, 4)
    assert (
        train.tensors[0].dtype == torch.float32
        and train.tensors[1].dtype == torch.int64
    )


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"images": np.zeros((4, 3, 3))}, "missing array"),
        ({"images": np.zeros((4, 9)), "labels": np.zeros(4, int)}, r"\[N, H, W\]"),
        ({"images": np.zeros((4, 3, 3)), "labels": np.zeros(5, int)}, "one per image"),
        ({"images": np.zeros((4, 3, 3)), "labels": np.zeros(4)}, "integers"),
        ({"images": np.zeros((4, 3, 3)), "labels": np.zeros(4, bool)}, "integers"),
        ({"images": np.full((4, 3, 3), np.nan), "labels": np.zeros(4, int)}, "NaN"),
        ({"images": np.full((4, 3, 3), "a"), "labels": np.zeros(4, int)}, "numeric"),
        ({"images": np.full((4, 3, 3), 3e38), "labels": np.zeros(4, int)}, "rescale"),
        ({"images": np.zeros((0, 3, 3)), "labels": np.zeros(0, int)}, "at least 2"),
        (
            {"images": np.zeros((4, 8, 8, 3)), "labels": np.zeros(4, int)},
            r"channels-last \[N, H, W, C\].*transpose\(0, 3, 1, 2\)",
        ),
    ],
)
def test_npz_malformed(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        load_npz(tmp_path / "bad.npz")


def test_npz_missing_or_not_npz(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_npz(tmp_path / "nothing.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match="not a valid dataset"):
        load_npz(tmp_path / "text.npz")
    with open(tmp_path / "renamed.npz", "wb") as handle:  # a .npy under .npz
        np.save(handle, np.zeros((4, 3, 3)))
    with pytest.raises(ValueError, match=r"single array \(a \.npy file\)"):
        load_npz(tmp_path / "renamed.npz")
    # pickled object arrays are never loaded
    np.savez(
        tmp_path / "pickled.npz",
        images=np.zeros((4, 3, 3)),
        labels=np.array([object()] * 4),
    )
    with pytest.raises(ValueError, match="not a valid dataset"):
        load_npz(tmp_path / "pickled.npz")


@pytest.mark.parametrize(
    ("labels", "classes"),
    [
        (np.array([3, 7] * 10), [3, 7]),
        (np.array([-5, 0, 10**9, 7] * 5), [-5, 0, 7, 10**9]),
        (
            np.array([2**63 + 5, 1, 2**64 - 1, 1] * 5, dtype=np.uint64),
            [1, 2**63 + 5, 2**64 - 1],
        ),
        (np.arange(20, dtype=np.int8) % 4, [0, 1, 2, 3]),
    ],
)
def test_labels_are_remapped_to_0_to_k_minus_1_in_sorted_order(
    tmp_path, labels, classes
):
    images = np.arange(len(labels), dtype=np.float32)[:, None, None] * np.ones((3, 3))
    np.savez(tmp_path / "d.npz", images=images, labels=labels)
    train, test = load_npz(tmp_path / "d.npz")
    assert train.classes.tolist() == classes and test.classes is train.classes
    for data in (train, test):
        x, y = data.tensors
        assert y.dtype == torch.int64
        assert 0 <= int(y.min()) <= int(y.max()) < len(classes)
        # image i was stored with label labels[i]: the map sends it to its class
        original = labels[x[:, 0, 0, 0].long().numpy()]
        assert np.array_equal(train.classes[y.numpy()], original)


def test_channels_first_small_images_are_not_mistaken_for_channels_last(tmp_path):
    # [N, C=3, H=4, W=4]: the last axis is small too, but so are H and W
    np.savez(tmp_path / "d.npz", images=np.zeros((8, 3, 4, 4)), labels=np.arange(8) % 2)
    train, _ = load_npz(tmp_path / "d.npz")
    assert train.tensors[0].shape[1:] == (3, 4, 4)
