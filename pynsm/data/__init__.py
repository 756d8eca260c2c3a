"""Datasets with their standard splits, their file readers, and tensor augmentations.

:func:`load_dataset` is the entry point: scikit-learn's digits, MNIST,
Fashion-MNIST, KMNIST, CIFAR-10/100 (:func:`load_standard`, torchvision's on-disk
layout, optional checksummed downloads), ``.npz`` files (:func:`load_npz`) and
image folders (:func:`load_image_folder`, lazy).
"""

from pynsm.data.checks import ImageDatasetInfo, check_image_dataset
from pynsm.data.cifar import read_cifar_binary
from pynsm.data.digits import load_digits
from pynsm.data.folder import ImageFolderDataset, load_image_folder
from pynsm.data.idx import read_idx
from pynsm.data.long_tail import (
    LONG_TAIL_SEED,
    long_tailed_counts,
    long_tailed_indices,
)
from pynsm.data.multicrop import MultiCrop, random_resized_crop
from pynsm.data.npz import load_npz, stratified_split
from pynsm.data.registry import DATASET_NAMES, load_dataset
from pynsm.data.standard import STANDARD_DATASETS, default_data_dir, load_standard

__all__ = [
    "load_dataset",
    "DATASET_NAMES",
    "load_standard",
    "STANDARD_DATASETS",
    "default_data_dir",
    "load_image_folder",
    "ImageFolderDataset",
    "read_idx",
    "read_cifar_binary",
    "check_image_dataset",
    "ImageDatasetInfo",
    "load_digits",
    "load_npz",
    "stratified_split",
    "long_tailed_indices",
    "long_tailed_counts",
    "LONG_TAIL_SEED",
    "MultiCrop",
    "random_resized_crop",
]
