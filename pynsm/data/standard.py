"""MNIST, Fashion-MNIST, KMNIST, CIFAR-10 and CIFAR-100 with their standard splits.

Files are looked for, and downloaded to, torchvision's on-disk layout under a data
folder, so data already fetched by torchvision is found and never fetched twice:

| dataset | files under ``DATA_DIR`` |
|---|---|
| mnist | ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` |
| fashion-mnist | ``FashionMNIST/raw/`` (same names) |
| kmnist | ``KMNIST/raw/`` (same names) |
| cifar10 | ``cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin`` |
| cifar100 | ``cifar-100-binary/{train,test}.bin`` |

CIFAR is read from its binary release (torchvision keeps the pickled
``cifar-10-batches-py``, which pynsm never unpickles; the binary archive sits
beside it). The URLs and MD5 sums are the datasets' official ones, as torchvision
lists them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import TensorDataset

from pynsm.data.cifar import read_cifar_binary
from pynsm.data.download import download_file, extract_members, file_digest
from pynsm.data.idx import read_idx

__all__ = ["STANDARD_DATASETS", "StandardDataset", "load_standard", "default_data_dir"]


@dataclass(frozen=True)
class StandardDataset:
    """Where a published dataset lives, on disk and online.

    Attributes:
        folder: Sub-folder of the data folder holding the files to read.
        train_files: Files of the training split, relative to ``folder``.
        test_files: Files of the test split.
        urls: Base addresses tried in order (mirrors).
        checksums: ``{file to download: md5}``; for IDX the ``.gz`` files, for
            CIFAR the archive (downloaded to the data folder, then extracted).
        classes: Class names, ``classes[k]`` for label ``k``.
        kind: ``"idx"`` or ``"cifar"``.
        label_bytes: CIFAR label bytes per record (1 for CIFAR-10, 2 for -100).
        extras: Other files extracted from the archive (class names).
    """

    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    urls: tuple[str, ...]
    checksums: dict[str, str]
    classes: tuple[str, ...]
    kind: str
    label_bytes: int = 1
    extras: tuple[str, ...] = ()


def _idx(
    folder: str, urls: tuple[str, ...], md5: tuple[str, ...], classes: tuple[str, ...]
) -> StandardDataset:
    names = (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    )
    return StandardDataset(
        folder=f"{folder}/raw",
        train_files=names[:2],
        test_files=names[2:],
        urls=urls,
        checksums={f"{name}.gz": digest for name, digest in zip(names, md5)},
        classes=classes,
        kind="idx",
    )


_CIFAR100_CLASSES = tuple(str(k) for k in range(100))  # names: fine_label_names.txt

#: The datasets :func:`load_standard` knows, by their ``--dataset`` name.
STANDARD_DATASETS: dict[str, StandardDataset] = {
    "mnist": _idx(
        "MNIST",
        (
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        (
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "d53e105ee54ea40749a09fcbcd1e9432",
            "9fb629c4189551a2d022fa330f9573f3",
            "ec29112dd5afa0611ce80d1b7f02629c",
        ),
        tuple(str(k) for k in range(10)),
    ),
    "fashion-mnist": _idx(
        "FashionMNIST",
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        (
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "25c81989df183df01b3e8a0aad5dffbe",
            "bef4ecab320f06d8554ea6380940ec79",
            "bb300cfdad3c16e7a12a480ee83cd310",
        ),
        (
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
    ),
    "kmnist": _idx(
        "KMNIST",
        ("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
        (
            "bdb82020997e1d708af4cf47b453dcf7",
            "e144d726b3acfaa3e44228e80efcd344",
            "5c965bf0a639b31b8f53240b1b52f4d7",
            "7320c461ea6c1c855c0b718fb2a4b134",
        ),
        ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
    ),
    "cifar10": StandardDataset(
        folder="cifar-10-batches-bin",
        train_files=tuple(f"data_batch_{k}.bin" for k in range(1, 6)),
        test_files=("test_batch.bin",),
        urls=("https://www.cs.toronto.edu/~kriz/",),
        checksums={"cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530"},
        classes=(
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ),
        kind="cifar",
    ),
    "cifar100": StandardDataset(
        folder="cifar-100-binary",
        train_files=("train.bin",),
        test_files=("test.bin",),
        urls=("https://www.cs.toronto.edu/~kriz/",),
        checksums={"cifar-100-binary.tar.gz": "03b5dce01913d631647c71ecec9e9cb8"},
        classes=_CIFAR100_CLASSES,
        kind="cifar",
        label_bytes=2,
        extras=("fine_label_names.txt",),
    ),
}


def default_data_dir() -> str:
    """``$PYNSM_DATA``, else ``$XDG_CACHE_HOME/pynsm``, else ``~/.cache/pynsm``."""
    if os.environ.get("PYNSM_DATA"):
        return os.environ["PYNSM_DATA"]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache"
    )
    return os.path.join(cache, "pynsm")


def load_standard(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    progress: bool = True,
) -> tuple[TensorDataset, TensorDataset]:
    """A published dataset with its standard train/test split, held in memory.

    Args:
        name: A key of :data:`STANDARD_DATASETS`.
        data_dir: The data folder (default :func:`default_data_dir`).
        download: Fetch missing files from the official addresses (checksummed,
            atomic). Without it, missing files raise :class:`FileNotFoundError`.
        progress: Show download progress bars.

    Returns:
        ``(train, test)`` :class:`~torch.utils.data.TensorDataset` of float32
        images ``[N, C, H, W]`` in [0, 1] and int64 labels; ``classes`` (names)
        is set on both. MNIST-family: ``[60000, 1, 28, 28]`` and
        ``[10000, 1, 28, 28]``; CIFAR: ``[50000, 3, 32, 32]`` and
        ``[10000, 3, 32, 32]``.

    Raises:
        ValueError: unknown ``name``, ``data_dir`` is a file, a file is corrupt
            (wrong magic number, truncated, labels out of range) or a download
            fails its checksum.
        FileNotFoundError: files are missing and ``download`` is false (the
            message names them and the folder).
        OSError: a download failed on the network or the disk.

    Example:
        >>> import tempfile
        >>> from pynsm.data import load_standard
        >>> load_standard("mnist", tempfile.mkdtemp())  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        FileNotFoundError: mnist: missing train-images-idx3-ubyte[.gz], ...
    """
    if name not in STANDARD_DATASETS:
        raise ValueError(
            f"name: unknown dataset {name!r}; expected one of "
            f"{sorted(STANDARD_DATASETS)}"
        )
    spec = STANDARD_DATASETS[name]
    root = _data_root(data_dir)
    folder = os.path.join(root, spec.folder)
    missing = _missing(spec, folder)
    if missing and not download:
        raise FileNotFoundError(
            f"{name}: missing {', '.join(missing)} in {folder}; pass download=True "
            f"(pynsm: --download) to fetch them from {spec.urls[0]}"
        )
    if missing:
        _fetch(spec, root, folder, progress)
    if spec.kind == "idx":
        train, test = (
            _idx_split(spec, folder, files)
            for files in (spec.train_files, spec.test_files)
        )
    else:
        train, test = (
            _cifar_split(spec, folder, files)
            for files in (spec.train_files, spec.test_files)
        )
    classes = list(spec.classes)
    if name == "cifar100":
        classes = _cifar100_names(folder) or classes
    train.classes = test.classes = classes  # type: ignore[attr-defined]
    return train, test


def _data_root(data_dir: str | os.PathLike[str] | None) -> str:
    root = os.fspath(data_dir) if data_dir is not None else default_data_dir()
    if os.path.exists(root) and not os.path.isdir(root):
        raise ValueError(f"data_dir {root!r} is a file, not a directory")
    return root


def _resolved(spec: StandardDataset, folder: str, name: str) -> str | None:
    # torchvision keeps both the .gz and its decompressed copy; either will do
    for candidate in (name, f"{name}.gz") if spec.kind == "idx" else (name,):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    return None


def _missing(spec: StandardDataset, folder: str) -> list[str]:
    suffix = "[.gz]" if spec.kind == "idx" else ""
    return [
        f"{name}{suffix}"
        for name in spec.train_files + spec.test_files
        if _resolved(spec, folder, name) is None
    ]


def _fetch(spec: StandardDataset, root: str, folder: str, progress: bool) -> None:
    for file, md5 in spec.checksums.items():
        # IDX files are read compressed; CIFAR's archive is kept beside its folder
        target = os.path.join(folder if spec.kind == "idx" else root, file)
        if spec.kind == "idx" and _resolved(spec, folder, file[:-3]) is not None:
            continue
        if not (os.path.isfile(target) and file_digest(target) == md5):
            _download(spec, file, target, md5, progress)
        if spec.kind == "cifar":
            top = spec.folder
            files = spec.train_files + spec.test_files + spec.extras
            names = [f"{top}/{n}" for n in files]
            extract_members(target, names, root)


def _download(
    spec: StandardDataset, file: str, target: str, md5: str, progress: bool
) -> None:
    errors = []
    for base in spec.urls:
        try:
            download_file(base + file, target, md5=md5, progress=progress)
            return
        except OSError as exc:  # try the next mirror; a bad checksum is final
            errors.append(f"{base}{file}: {exc}")
    raise OSError(f"could not download {file}: {'; '.join(errors)}")


def _idx_split(
    spec: StandardDataset, folder: str, files: tuple[str, ...]
) -> TensorDataset:
    image_path = _resolved(spec, folder, files[0])
    label_path = _resolved(spec, folder, files[1])
    assert image_path is not None and label_path is not None
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"{image_path!r}: expected uint8 images [N, H, W], got {images.dtype} "
            f"{images.shape}"
        )
    if labels.shape != (len(images),):
        raise ValueError(
            f"{label_path!r}: expected {len(images)} labels (one per image in "
            f"{os.path.basename(image_path)}), got shape {labels.shape}"
        )
    return _tensors(images[:, None], labels, len(spec.classes), label_path)


def _cifar_split(
    spec: StandardDataset, folder: str, files: tuple[str, ...]
) -> TensorDataset:
    parts = [
        read_cifar_binary(
            os.path.join(folder, file), spec.label_bytes, len(spec.classes)
        )
        for file in files
    ]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return _tensors(images, labels, len(spec.classes), os.path.join(folder, files[0]))


def _tensors(
    images: np.ndarray, labels: np.ndarray, num_classes: int, where: str
) -> TensorDataset:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = int(labels.max() if labels.max() >= num_classes else labels.min())
        raise ValueError(f"{where!r}: label {bad} out of range 0..{num_classes - 1}")
    # float32 in [0, 1], divided in place: one copy of the data at a time
    pixels = torch.from_numpy(images).to(torch.float32).div_(255.0)
    return TensorDataset(pixels, torch.from_numpy(labels.astype(np.int64)))


def _cifar100_names(folder: str) -> list[str] | None:
    path = os.path.join(folder, "fine_label_names.txt")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        names = [line.strip() for line in handle if line.strip()]
    return names if len(names) == 100 else None
