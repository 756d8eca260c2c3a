"""check_image_dataset: what a model needs from a dataset."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from pynsm.data import ImageDatasetInfo, check_image_dataset


def _data(n=10, shape=(1, 8, 8), classes=2):
    return TensorDataset(torch.zeros(n, *shape), torch.arange(n) % classes)


def test_facts_of_a_good_pair():
    train, test = _data(shape=(3, 6, 9), classes=4), _data(shape=(3, 6, 9))
    info = check_image_dataset(train, test)
    assert info == ImageDatasetInfo(channels=3, height=6, width=9, num_classes=4)


@pytest.mark.parametrize(
    ("train", "test", "kwargs", "match"),
    [
        (_data(classes=1), _data(), {}, "1 class"),
        (_data(), _data(), {"min_classes": 3}, "at least 3"),
        (_data(shape=(1, 2, 2)), _data(shape=(1, 2, 2)), {"min_size": 3}, "3x3"),
        (_data(shape=(1, 8, 6)), _data(shape=(1, 8, 6)), {"square": True}, "square"),
        (_data(), _data(shape=(1, 8, 7)), {}, "differ in shape"),
        (_data(n=0), _data(), {}, "training set is empty"),
        (_data(), _data(n=0), {}, "test set is empty"),
        (
            TensorDataset(torch.zeros(4, 8, 8), torch.zeros(4).long()),
            _data(),
            {},
            r"\[N, C, H, W\]",
        ),
        (
            TensorDataset(torch.zeros(4, 1, 8, 8), -torch.ones(4).long()),
            _data(),
            {},
            ">= 0",
        ),
    ],
)
def test_each_failure_names_what_is_wrong(train, test, kwargs, match):
    with pytest.raises(ValueError, match=match):
        check_image_dataset(train, test, **kwargs)


def test_argument_types():
    with pytest.raises(TypeError, match="TensorDataset"):
        check_image_dataset([1, 2], _data())
    with pytest.raises(TypeError, match="min_size"):
        check_image_dataset(_data(), _data(), min_size=2.5)
