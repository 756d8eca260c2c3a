"""Image folders: class names kept, one size per dataset, decoded lazily."""

from __future__ import annotations

import os
import tracemalloc

import numpy as np
import pytest
import torch
from _data_files import write_image_folder
from torch.utils.data import DataLoader

from pynsm.data import ImageFolderDataset, check_image_dataset, load_dataset
from pynsm.data.folder import ImageDecodeError, load_image_folder

Image = pytest.importorskip("PIL.Image")


def test_gray_folder(tmp_path):
    root = write_image_folder(str(tmp_path), ("b", "a", "c"), per_class=2)
    train, test = load_dataset(root)
    assert isinstance(train, ImageFolderDataset) and train.split == "standard"
    assert train.classes == ["a", "b", "c"] and train.targets.tolist() == [
        0,
        0,
        1,
        1,
        2,
        2,
    ]
    image, label = train[2]
    assert image.shape == (1, 5, 6) and image.dtype == torch.float32
    expected = np.asarray(Image.open(train.paths[2]), np.float32) / 255
    torch.testing.assert_close(image[0], torch.from_numpy(expected))
    assert int(label) == 1
    info = check_image_dataset(train, test)
    assert (info.channels, info.height, info.width, info.num_classes) == (1, 5, 6, 3)


def test_any_colour_image_makes_the_dataset_rgb(tmp_path):
    root = write_image_folder(str(tmp_path), per_class=2)
    Image.new("RGB", (6, 5), (255, 0, 0)).save(
        os.path.join(root, "test", "dog", "red.jpg")
    )
    train, test = load_image_folder(root)
    assert train.image_shape == test.image_shape == (3, 5, 6)
    red = test[len(test) - 1][0]
    assert red.shape == (3, 5, 6) and red[0].min() > 0.9 and red[1].max() < 0.1


def test_test_split_may_lack_a_class_but_not_add_one(tmp_path):
    root = write_image_folder(str(tmp_path), ("a", "b", "c"), per_class=1)
    for name in os.listdir(os.path.join(root, "test", "c")):
        os.remove(os.path.join(root, "test", "c", name))
    os.rmdir(os.path.join(root, "test", "c"))
    train, test = load_image_folder(root)
    assert len(train) == 3 and len(test) == 2
    os.makedirs(os.path.join(root, "test", "z"))
    with pytest.raises(ValueError, match="test classes \\['z'\\]"):
        load_image_folder(root)


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ("one_class", "at least 2 class"),
        ("not_image", "cannot read image"),
        ("other_size", "images differ in size"),
        ("empty_class", "holds no images"),
        ("no_test", "no 'test' sub-folder"),
    ],
)
def test_bad_folders(tmp_path, damage, match):
    if damage == "one_class":
        root = write_image_folder(str(tmp_path), ("only",))
    else:
        root = write_image_folder(str(tmp_path))
    if damage == "not_image":
        with open(os.path.join(root, "train", "cat", "bad.png"), "wb") as handle:
            handle.write(b"not a png")
    elif damage == "other_size":
        Image.new("L", (7, 5)).save(os.path.join(root, "test", "cat", "big.png"))
    elif damage == "empty_class":
        os.makedirs(os.path.join(root, "train", "empty"))
    elif damage == "no_test":
        os.rename(os.path.join(root, "test"), os.path.join(root, "val"))
    with pytest.raises((ValueError, FileNotFoundError), match=match) as info:
        load_image_folder(root)
    assert "\n" not in str(info.value)


def test_cut_image_fails_on_access_with_its_name(tmp_path):
    root = write_image_folder(str(tmp_path), size=(40, 40))
    path = os.path.join(root, "train", "cat", "0.png")
    with open(path, "rb") as handle:
        data = handle.read()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])  # the header survives
    train, _ = load_image_folder(root)
    with pytest.raises(ImageDecodeError, match="0.png"):
        train[0]


def test_workers_stream_the_folder(tmp_path):
    root = write_image_folder(str(tmp_path), per_class=8)
    train, _ = load_image_folder(root)
    loader = DataLoader(train, batch_size=4, num_workers=1)
    batches = list(loader)
    images = torch.cat([b[0] for b in batches])
    assert images.shape == (16, 1, 5, 6)
    torch.testing.assert_close(images[5], train[5][0])


def test_memory_does_not_grow_with_the_pixels(tmp_path):
    # the dataset holds paths and labels; pixels are decoded one item at a time
    root = write_image_folder(str(tmp_path), per_class=50, size=(64, 64))
    tracemalloc.start()
    try:
        train, _ = load_image_folder(root)
        for index in range(len(train)):
            train[index]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    all_pixels = len(train) * 64 * 64 * 4  # float32, had it been held at once
    assert peak < all_pixels / 4
