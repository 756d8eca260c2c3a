"""The one fused loop and its options: convergence test, callback, cache blocks."""

from __future__ import annotations

import pytest
import torch
from conftest import random_spd

from pynsm.arch import _fused


def _problem(rows=40, channels=6, lr=0.3, spatial=False):
    shape = (rows, channels, 5) if spatial else (rows, channels)
    drive = lr * torch.randn(shape, dtype=torch.float64)
    competitor = random_spd(channels, dtype=torch.float64)
    return drive, _fused.make_update(competitor, lr, spatial), competitor


def _reference(drive, competitor, lr, iterations):
    """The iteration written out plainly: y <- relu(y - lr (M y - b))."""
    b = drive / lr
    y = torch.zeros_like(drive)
    for _ in range(iterations):
        y = torch.relu(y - lr * (torch.einsum("ij,bj...->bi...", competitor, y) - b))
    return y


@pytest.mark.parametrize("spatial", [False, True])
def test_fused_loop_is_the_iteration(spatial):
    drive, update, competitor = _problem(spatial=spatial)
    y, idx = _fused.run_fused_iteration(drive, update, 7, torch.Tensor.relu_)
    assert idx == 6
    torch.testing.assert_close(y, _reference(drive, competitor, 0.3, 7))


@pytest.mark.parametrize("tol", [0.0, 1e-6])
def test_callback_sees_every_iterate_and_changes_nothing(tol):
    drive, update, competitor = _problem()
    plain, plain_idx = _fused.run_fused_iteration(
        drive, update, 300, torch.Tensor.relu_, tol=tol
    )
    seen = []

    def record(i, y):
        seen.append((i, y.clone()))
        return False

    watched, watched_idx = _fused.run_fused_iteration(
        drive, update, 300, torch.Tensor.relu_, tol=tol, on_iteration=record
    )
    assert watched_idx == plain_idx and torch.equal(watched, plain)
    assert [i for i, _ in seen] == list(range(plain_idx + 1))
    torch.testing.assert_close(seen[3][1], _reference(drive, competitor, 0.3, 4))
    if tol:
        assert plain_idx < 299


def test_callback_stops_the_loop():
    drive, update, _ = _problem()
    y, idx = _fused.run_fused_iteration(
        drive, update, 50, torch.Tensor.relu_, on_iteration=lambda i, y: i == 5
    )
    assert idx == 5
    y6, _ = _fused.run_fused_iteration(drive, update, 6, torch.Tensor.relu_)
    assert torch.equal(y, y6)


@pytest.mark.parametrize("check_every", [1, 3])
@pytest.mark.parametrize("chunk_rows", [None, 4])
def test_empty_batch(check_every, chunk_rows):
    drive, update, _ = _problem(rows=0)
    for tol, expected_idx in [(0.0, 9), (1e-3, 1)]:
        y, idx = _fused.run_fused_iteration(
            drive,
            update,
            10,
            torch.Tensor.relu_,
            tol=tol,
            check_every=check_every,
            chunk_rows=chunk_rows,
        )
        assert y.shape == drive.shape and idx == expected_idx


def test_zero_and_one_iteration():
    drive, update, _ = _problem()
    y, idx = _fused.run_fused_iteration(drive, update, 0, torch.Tensor.relu_)
    assert idx == -1 and torch.equal(y, torch.zeros_like(drive))
    y, idx = _fused.run_fused_iteration(
        drive, update, 1, torch.Tensor.relu_, chunk_rows=3
    )
    assert idx == 0 and torch.equal(y, torch.relu(drive))


@pytest.mark.parametrize("rows", [1, 5, 12])
def test_blocks_equal_whole_batch(rows):
    drive, update, _ = _problem(rows=12, spatial=True)
    whole, _ = _fused.run_fused_iteration(drive, update, 9, torch.Tensor.relu_)
    blocked, idx = _fused.run_fused_iteration(
        drive, update, 9, torch.Tensor.relu_, chunk_rows=rows
    )
    assert idx == 8
    torch.testing.assert_close(blocked, whole, rtol=1e-12, atol=1e-12)


def test_callback_requires_checking_every_iteration():
    drive, update, _ = _problem()
    with pytest.raises(ValueError, match="check_every"):
        _fused.run_fused_iteration(
            drive, update, 5, torch.Tensor.relu_, check_every=2, on_iteration=print
        )
