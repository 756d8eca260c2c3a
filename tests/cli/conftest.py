"""Shared fixtures of the command-line tests: tiny datasets, one thread."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _cli_helpers import digits_arrays


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny models: one thread is faster and immune to oversubscribed CI machines
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def small_npz(tmp_path_factory):
    """200 digits as a .npz whose labels are 0, 10**9, 2*10**9, ... (remapped)."""
    pytest.importorskip("sklearn")
    images, labels = digits_arrays(200)
    path = tmp_path_factory.mktemp("data") / "small.npz"
    np.savez(path, images=images, labels=labels.astype(np.int64) * 10**9)
    return str(path)
