"""Small datasets written in the official file formats, for the reader tests."""

from __future__ import annotations

import os

import numpy as np

from pynsm.data.cifar import write_cifar_binary
from pynsm.data.idx import write_idx

MNIST_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def mnist_arrays(n: int, seed: int, side: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random uint8 images ``[n, side, side]`` and labels cycling 0-9."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, side, side), dtype=np.uint8)
    return images, (np.arange(n) % 10).astype(np.uint8)


def write_mnist_layout(
    data_dir: str,
    folder: str = "MNIST",
    n_train: int = 40,
    n_test: int = 20,
    gz: bool = False,
) -> str:
    """torchvision's ``DATA_DIR/<folder>/raw`` with four IDX files; returns raw/."""
    raw = os.path.join(data_dir, folder, "raw")
    os.makedirs(raw, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        images, labels = mnist_arrays(n, seed)
        suffix = ".gz" if gz else ""
        write_idx(os.path.join(raw, MNIST_NAMES[split][0] + suffix), images)
        write_idx(os.path.join(raw, MNIST_NAMES[split][1] + suffix), labels)
    return raw


def cifar_arrays(n: int, seed: int, classes: int = 10):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    return images, np.arange(n) % classes


def write_cifar10_layout(data_dir: str, per_batch: int = 4) -> str:
    """``DATA_DIR/cifar-10-batches-bin`` with five training batches and a test one."""
    folder = os.path.join(data_dir, "cifar-10-batches-bin")
    os.makedirs(folder, exist_ok=True)
    for k in range(1, 6):
        write_cifar_binary(
            os.path.join(folder, f"data_batch_{k}.bin"), *cifar_arrays(per_batch, k)
        )
    write_cifar_binary(os.path.join(folder, "test_batch.bin"), *cifar_arrays(6, 0))
    return folder


def write_image_folder(
    root: str,
    classes=("cat", "dog"),
    per_class: int = 3,
    size=(6, 5),
    mode: str = "L",
    test: bool = True,
) -> str:
    """``root/{train,test}/<class>/k.png`` of ``size`` (width, height) images."""
    from PIL import Image

    rng = np.random.default_rng(0)
    channels = {"L": (), "RGB": (3,)}[mode]
    for split in ("train", "test") if test else ("train",):
        for name in classes:
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for k in range(per_class):
                pixels = rng.integers(0, 256, (size[1], size[0], *channels), np.uint8)
                Image.fromarray(pixels, mode).save(os.path.join(folder, f"{k}.png"))
    return root
