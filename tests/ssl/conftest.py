import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    # these tensors are tiny: one thread is as fast, and it avoids thread thrashing
    # when the cores are shared with other processes
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
