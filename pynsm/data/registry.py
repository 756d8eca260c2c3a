"""One entry point for every dataset: :func:`load_dataset` by name or path."""

from __future__ import annotations

import os

from torch.utils.data import Dataset

from pynsm.data.standard import STANDARD_DATASETS, load_standard

__all__ = ["load_dataset", "DATASET_NAMES"]

#: The names :func:`load_dataset` accepts besides a path.
DATASET_NAMES = ("digits", *STANDARD_DATASETS)


def load_dataset(
    name_or_path: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    *,
    test_fraction: float = 0.25,
    seed: int = 0,
    progress: bool = True,
) -> tuple[Dataset, Dataset]:
    """A dataset's train and test sets, with its standard split where it has one.

    * ``"digits"`` (scikit-learn's 8x8): a stratified split drawn here
      (``test_fraction``, ``seed``);
    * ``"mnist"``, ``"fashion-mnist"``, ``"kmnist"``: the standard 60,000 /
      10,000 split; ``"cifar10"``, ``"cifar100"``: 50,000 / 10,000
      (:func:`~pynsm.data.load_standard`);
    * a ``.npz`` holding ``train_images``, ``train_labels``, ``test_images`` and
      ``test_labels``: the file's own split; one holding ``images`` and
      ``labels``: a stratified split (:func:`~pynsm.data.load_npz`);
    * a folder ``DIR/{train,test}/<class>/*``: the folder's own split, images
      decoded lazily (:func:`~pynsm.data.load_image_folder`).

    Both returned datasets carry ``split``: ``"standard"`` (the dataset's own
    test set) or ``"stratified"`` (held out here).

    Args:
        name_or_path: A name of :data:`DATASET_NAMES`, a ``.npz`` file or an
            image folder.
        data_dir: Folder of the published datasets, in torchvision's layout
            (default: ``$PYNSM_DATA``, else ``~/.cache/pynsm``); unused for
            paths and digits.
        download: Fetch a missing published dataset (checksummed, atomic).
        test_fraction: Held-out fraction of a stratified split.
        seed: Seed of a stratified split.
        progress: Show download progress bars.

    Returns:
        ``(train, test)`` map-style datasets of ``(image [C, H, W] float32,
        label int64)``; in-memory :class:`~torch.utils.data.TensorDataset` except
        for image folders.

    Raises:
        ValueError: an unknown name, ``data_dir`` is a file, or malformed data
            (the message says which file and what is wrong).
        FileNotFoundError: the path or the dataset's files are missing.
        ImportError: an optional dependency (scikit-learn for digits, Pillow for
            image folders) is missing.

    Example:
        >>> import numpy as np, os, tempfile
        >>> from pynsm.data import load_dataset
        >>> path = os.path.join(tempfile.mkdtemp(), "kept.npz")
        >>> np.savez(path, train_images=np.zeros((6, 4, 4), np.uint8),
        ...          train_labels=np.arange(6) % 2,
        ...          test_images=np.zeros((2, 4, 4), np.uint8),
        ...          test_labels=np.array([0, 1]))
        >>> train, test = load_dataset(path)
        >>> len(train), len(test), train.split
        (6, 2, 'standard')
    """
    name = os.fspath(name_or_path)
    if name == "digits":
        from pynsm.data.digits import load_digits

        train, test = load_digits(test_fraction=test_fraction, seed=seed)
        split = "stratified"
    elif name in STANDARD_DATASETS:
        train, test = load_standard(name, data_dir, download, progress)
        split = "standard"
    elif name.endswith(".npz"):
        from pynsm.data.npz import load_npz

        train, test = load_npz(name, test_fraction=test_fraction, seed=seed)
        split = getattr(train, "split", "stratified")
    elif os.path.isdir(name):
        from pynsm.data.folder import load_image_folder

        train, test = load_image_folder(name)
        split = "standard"
    elif os.path.exists(name):
        raise ValueError(
            f"name_or_path: {name!r} is neither a .npz file nor an image folder"
        )
    else:
        raise FileNotFoundError(
            f"name_or_path: {name!r} is not a dataset name "
            f"({', '.join(DATASET_NAMES)}), nor an existing .npz file or folder"
        )
    train.split = test.split = split  # type: ignore[attr-defined]
    return train, test
