"""Long-tailed subsets: power-law class counts with a given imbalance."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from pynsm.data import long_tailed_counts, long_tailed_indices

# MNIST's training split, per class
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
# the long tail documented in docs/mnist.md (imbalance 100, seed 0)
MNIST_LONG_TAIL_100 = [84, 54, 602, 216, 5421, 150, 1355, 338, 66, 110]


def test_counts_follow_the_power_law_of_the_ranks():
    counts = long_tailed_counts(MNIST_TRAIN_COUNTS, imbalance=100)
    ranked = np.sort(counts)[::-1]
    head = min(MNIST_TRAIN_COUNTS)
    # alpha = log(100) / log(10) = 2: the class of rank r keeps head / (r + 1)^2
    expected = [math.floor(head / (r + 1) ** 2) for r in range(10)]
    assert ranked.tolist() == expected
    assert ranked[0] / ranked[-1] == pytest.approx(100, rel=0.01)
    assert counts.tolist() == MNIST_LONG_TAIL_100


def test_the_class_order_depends_on_the_seed_only():
    a = long_tailed_counts([50] * 5, imbalance=10, seed=3)
    assert a.tolist() == long_tailed_counts([50] * 5, imbalance=10, seed=3).tolist()
    assert sorted(a.tolist()) == sorted(long_tailed_counts([50] * 5, 10, 4).tolist())
    orders = {tuple(long_tailed_counts([50] * 5, 10, seed)) for seed in range(6)}
    assert len(orders) > 1


def test_imbalance_one_keeps_the_smallest_class_size_everywhere():
    assert long_tailed_counts([7, 9, 8], imbalance=1).tolist() == [7, 7, 7]


def test_indices_draw_the_counts_without_repeats():
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(4), [40, 55, 47, 60]))
    kept = long_tailed_indices(labels, imbalance=8, seed=1)
    assert np.all(np.diff(kept) > 0)  # sorted, no index twice
    counts = np.bincount(labels[kept], minlength=4)
    assert counts.tolist() == long_tailed_counts([40, 55, 47, 60], 8, 1).tolist()
    # the same call draws the same images
    assert np.array_equal(kept, long_tailed_indices(labels, imbalance=8, seed=1))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: long_tailed_counts([5, 5], imbalance=6),
            "needs a class of at least 6",
        ),
        (lambda: long_tailed_counts([5, 5], imbalance=0.5), "imbalance"),
        (lambda: long_tailed_counts([5], imbalance=2), "at least 2 positive"),
        (lambda: long_tailed_indices(np.array([0, 0, 2, 2]), 1), "class(es) [1]"),
        (lambda: long_tailed_indices(np.array([0.0, 1.0]), 1), "integer classes"),
        (lambda: long_tailed_indices(np.array([-1, 0]), 1), ">= 0"),
    ],
)
def test_bad_input_is_refused(call, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        call()
