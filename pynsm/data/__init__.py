"""Datasets (digits, ``.npz`` files) and tensor augmentations (multi-crop)."""

from pynsm.data.checks import ImageDatasetInfo, check_image_dataset
from pynsm.data.digits import load_digits
from pynsm.data.multicrop import MultiCrop, random_resized_crop
from pynsm.data.npz import load_npz, stratified_split

__all__ = [
    "check_image_dataset",
    "ImageDatasetInfo",
    "load_digits",
    "load_npz",
    "stratified_split",
    "MultiCrop",
    "random_resized_crop",
]
