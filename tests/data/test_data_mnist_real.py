"""Real MNIST (tests/fetch_mnist.sh): the standard 60,000 / 10,000 split.

Skipped without the files (in ``$PYNSM_TEST_DATA`` or the checkout's ``.data``).
"""

from __future__ import annotations

import os

import pytest
import torch

from pynsm.data import load_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.environ.get("PYNSM_TEST_DATA") or os.path.join(ROOT, ".data")
HAVE_MNIST = os.path.isfile(
    os.path.join(DATA, "MNIST", "raw", "t10k-labels-idx1-ubyte")
) or os.path.isfile(os.path.join(DATA, "MNIST", "raw", "t10k-labels-idx1-ubyte.gz"))

pytestmark = pytest.mark.skipif(
    not HAVE_MNIST, reason=f"no MNIST in {DATA} (run: bash tests/fetch_mnist.sh)"
)

# the published class counts of the two splits
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_mnist_standard_split():
    train, test = load_dataset("mnist", DATA)
    assert train.tensors[0].shape == (60000, 1, 28, 28)
    assert test.tensors[0].shape == (10000, 1, 28, 28)
    assert torch.bincount(train.tensors[1]).tolist() == TRAIN_COUNTS
    assert torch.bincount(test.tensors[1]).tolist() == TEST_COUNTS
    assert float(train.tensors[0].min()) == 0.0
    assert float(train.tensors[0].max()) == 1.0
    assert train.split == "standard"
