import os
import sys

import pytest
import torch

# tests/ holds helpers (dist_utils, peer) imported by the test modules
sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
