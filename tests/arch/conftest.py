"""Shared helpers for the circuit tests."""

from __future__ import annotations

import pytest
import torch


def random_spd(n: int, low: float = 0.5, high: float = 2.0, dtype=torch.float32):
    """A symmetric matrix with eigenvalues in [low, high]."""
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    eig = low + (high - low) * torch.rand(n, dtype=torch.float64)
    return ((q * eig) @ q.t()).to(dtype)


def set_competitor(circuit, matrix: torch.Tensor) -> None:
    with torch.no_grad():
        circuit.competitor.weight.copy_(matrix)


@pytest.fixture
def one_thread():
    """Run with one intra-op thread (robust timing on a shared 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
