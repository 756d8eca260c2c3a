"""The IDX and CIFAR-binary readers on small files written in the official formats."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest

from pynsm.data.cifar import read_cifar_binary, write_cifar_binary
from pynsm.data.idx import read_idx, write_idx


@pytest.mark.parametrize(
    "dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]
)
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, dtype, suffix):
    array = (np.arange(2 * 3 * 5) - 7).astype(dtype).reshape(2, 3, 5)
    path = tmp_path / f"a-idx3-ubyte{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    np.testing.assert_array_equal(back, array)


def test_idx_header_is_big_endian_as_published(tmp_path):
    # MNIST's published label file starts 00 00 08 01 00 00 ea 60 (60000 labels)
    path = tmp_path / "labels"
    write_idx(path, np.zeros(60000, np.uint8))
    assert path.read_bytes()[:8] == bytes.fromhex("00000801 0000ea60")


def test_idx_truncated_file_is_refused(tmp_path):
    path = tmp_path / "images"
    write_idx(path, np.zeros((10, 4, 4), np.uint8))
    path.write_bytes(path.read_bytes()[:-5])  # the header still counts 10 images
    with pytest.raises(ValueError, match="truncated.*shape \\(10, 4, 4\\)"):
        read_idx(path)


def test_idx_truncated_gzip_stream_is_refused(tmp_path):
    path = tmp_path / "images.gz"
    write_idx(path, np.arange(4000, dtype=np.int32))
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ValueError, match="cannot be read as IDX|truncated"):
        read_idx(path)


def test_idx_trailing_bytes_are_refused(tmp_path):
    path = tmp_path / "images"
    write_idx(path, np.zeros((2, 2), np.uint8))
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="longer than its header"):
        read_idx(path)


@pytest.mark.parametrize("head", [b"\x00\x01\x08\x01", b"\x00\x00\x07\x01", b"PK"])
def test_idx_wrong_magic_number(tmp_path, head):
    path = tmp_path / "x"
    path.write_bytes(head + b"\0" * 12)
    with pytest.raises(ValueError, match="not an IDX file \\(wrong magic number"):
        read_idx(path)


def test_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_idx(tmp_path / "nothing")


def test_idx_gz_that_is_not_gzip(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(b"\0\0\x08\x01\0\0\0\x01\x05")
    with pytest.raises(ValueError, match="cannot be read as IDX"):
        read_idx(path)
    with gzip.open(path, "wb") as handle:
        handle.write(b"\0\0\x08\x01\0\0\0\x01\x05")
    assert read_idx(path).tolist() == [5]


def test_write_idx_refuses_types_without_code(tmp_path):
    with pytest.raises(ValueError, match="IDX stores"):
        write_idx(tmp_path / "x", np.zeros(3, np.uint16))


def test_cifar10_records(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 3, 32, 32), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 4, 5, 9])
    path = tmp_path / "data_batch_1.bin"
    write_cifar_binary(path, images, labels)
    assert os.path.getsize(path) == 7 * 3073
    # one record by hand: the label byte, then the red, green and blue planes
    raw = path.read_bytes()[3073 : 2 * 3073]
    assert raw[0] == 1 and raw[1:1025] == images[1, 0].tobytes()
    got_images, got_labels = read_cifar_binary(path)
    np.testing.assert_array_equal(got_images, images)
    assert got_labels.dtype == np.int64 and got_labels.tolist() == labels.tolist()


def test_cifar100_reads_the_fine_label(tmp_path):
    images = np.zeros((3, 3, 32, 32), np.uint8)
    path = tmp_path / "train.bin"
    write_cifar_binary(path, images, np.array([99, 50, 0]), coarse_labels=[19, 3, 0])
    _, labels = read_cifar_binary(path, label_bytes=2, num_classes=100)
    assert labels.tolist() == [99, 50, 0]


def test_cifar_truncated_and_out_of_range(tmp_path):
    path = tmp_path / "test_batch.bin"
    write_cifar_binary(path, np.zeros((2, 3, 32, 32), np.uint8), np.array([0, 1]))
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match="not a whole number of 3073-byte"):
        read_cifar_binary(path)
    write_cifar_binary(path, np.zeros((2, 3, 32, 32), np.uint8), np.array([0, 10]))
    with pytest.raises(ValueError, match="label 10 out of range 0..9"):
        read_cifar_binary(path)
    with pytest.raises(FileNotFoundError):
        read_cifar_binary(tmp_path / "none.bin")
