"""Published datasets from torchvision's on-disk layout, with their standard split."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from _data_files import (
    MNIST_NAMES,
    cifar_arrays,
    mnist_arrays,
    write_cifar10_layout,
    write_mnist_layout,
)

from pynsm.data import STANDARD_DATASETS, default_data_dir, load_dataset, load_standard
from pynsm.data.cifar import write_cifar_binary
from pynsm.data.idx import write_idx


@pytest.mark.parametrize(
    ("name", "folder"),
    [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST"), ("kmnist", "KMNIST")],
)
@pytest.mark.parametrize("gz", [False, True])
def test_mnist_family_standard_split(tmp_path, name, folder, gz):
    write_mnist_layout(str(tmp_path), folder, n_train=30, n_test=20, gz=gz)
    train, test = load_dataset(name, tmp_path)
    images, labels = mnist_arrays(30, 0)
    assert train.tensors[0].shape == (30, 1, 28, 28) and len(test) == 20
    assert train.tensors[0].dtype == torch.float32
    torch.testing.assert_close(
        train.tensors[0][:, 0], torch.from_numpy(images).float() / 255
    )
    assert train.tensors[1].tolist() == labels.tolist()
    assert train.split == test.split == "standard"
    assert len(train.classes) == 10 and train.classes == test.classes


def test_uncompressed_copy_is_preferred_to_gz(tmp_path):
    # torchvision keeps both; either is the same data
    raw = write_mnist_layout(str(tmp_path), n_train=12, n_test=10, gz=True)
    write_mnist_layout(str(tmp_path), n_train=12, n_test=10, gz=False)
    os.remove(os.path.join(raw, MNIST_NAMES["train"][0] + ".gz"))
    train, _ = load_standard("mnist", tmp_path)
    assert len(train) == 12


def test_missing_files_are_named_with_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_standard("kmnist", tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert "train-images-idx3-ubyte[.gz]" in message and "t10k-labels" in message
    assert os.path.join(str(tmp_path), "KMNIST", "raw") in message
    assert "download=True" in message


def test_data_dir_that_is_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(ValueError, match="data_dir .* is a file"):
        load_standard("mnist", path)


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("PYNSM_DATA", str(tmp_path))
    assert default_data_dir() == str(tmp_path)
    monkeypatch.delenv("PYNSM_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_data_dir() == str(tmp_path / "cache" / "pynsm")


def test_labels_out_of_range(tmp_path):
    raw = write_mnist_layout(str(tmp_path), n_train=12, n_test=10)
    write_idx(os.path.join(raw, MNIST_NAMES["test"][1]), np.full(10, 10, np.uint8))
    with pytest.raises(ValueError, match="label 10 out of range 0..9"):
        load_standard("mnist", tmp_path)


def test_labels_and_images_disagree_in_count(tmp_path):
    raw = write_mnist_layout(str(tmp_path), n_train=12, n_test=10)
    write_idx(os.path.join(raw, MNIST_NAMES["train"][1]), np.zeros(11, np.uint8))
    with pytest.raises(ValueError, match="expected 12 labels"):
        load_standard("mnist", tmp_path)


def test_truncated_images_file(tmp_path):
    raw = write_mnist_layout(str(tmp_path), n_train=12, n_test=10)
    path = os.path.join(raw, MNIST_NAMES["train"][0])
    with open(path, "r+b") as handle:
        handle.truncate(16 + 28 * 28 * 5)
    with pytest.raises(ValueError, match="truncated"):
        load_standard("mnist", tmp_path)


def test_cifar10_binary_layout(tmp_path):
    write_cifar10_layout(str(tmp_path), per_batch=4)
    train, test = load_dataset("cifar10", tmp_path)
    assert train.tensors[0].shape == (20, 3, 32, 32) and len(test) == 6
    first, _ = cifar_arrays(4, 1)
    torch.testing.assert_close(train.tensors[0][:4], torch.from_numpy(first) / 255)
    assert train.classes[0] == "airplane" and train.split == "standard"


def test_cifar100_binary_layout_with_names(tmp_path):
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    for split, n in (("train", 8), ("test", 4)):
        images, fine = cifar_arrays(n, 0, classes=100)
        write_cifar_binary(
            folder / f"{split}.bin", images, fine * 12 % 100, coarse_labels=fine % 20
        )
    (folder / "fine_label_names.txt").write_text(
        "\n".join(f"name{k}" for k in range(100)) + "\n"
    )
    train, test = load_standard("cifar100", tmp_path)
    assert train.tensors[1].tolist() == [k * 12 % 100 for k in range(8)]
    assert train.classes[99] == "name99" and len(test) == 4


def test_pickled_cifar_is_not_read(tmp_path):
    # torchvision's python version is pickled: pynsm asks for the binary one
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-bin"):
        load_standard("cifar10", tmp_path)


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown dataset 'mnist2'"):
        load_standard("mnist2")
    assert set(STANDARD_DATASETS) == {
        "mnist",
        "fashion-mnist",
        "kmnist",
        "cifar10",
        "cifar100",
    }


def test_load_dataset_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a dataset name"):
        load_dataset("imagenet")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="neither a .npz file nor an image folder"):
        load_dataset(tmp_path / "x.txt")


def test_digits_keep_their_stratified_split():
    pytest.importorskip("sklearn")
    train, test = load_dataset("digits")
    assert (len(train), len(test), train.split) == (1347, 450, "stratified")
