"""Private numerics helpers: the finiteness check of the running statistics."""

import pytest
import torch

from pynsm.losses._numerics import all_finite, keep_finite


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_all_finite_is_isfinite_all_wherever_the_bad_value_sits(dtype, bad):
    g = torch.Generator().manual_seed(0)
    for size in (1, 2, 7, 8, 9, 31, 64, 67, 1000):
        x = (torch.randn(size, generator=g) * 1e3).to(dtype)
        assert all_finite(x).item() is True
        for position in {0, size // 2, size - 1}:
            y = x.clone()
            y[position] = bad
            assert all_finite(y).item() is False, (size, position)
    assert all_finite(torch.empty(0, 3)).item() is True


def test_keep_finite_takes_all_parts_or_none():
    new, old = [torch.ones(2), torch.ones(3)], [torch.zeros(2), torch.zeros(3)]
    assert all(k is n for k, n in zip(keep_finite(new, old, "x"), new))
    new[1][2] = float("nan")
    with pytest.warns(RuntimeWarning, match="x: the batch holds non-finite"):
        kept = keep_finite(new, old, "x")
    assert kept[0] is old[0] and kept[1] is old[1]


@pytest.mark.parametrize("on_host", [True, False])
def test_all_finite_on_host_over_several_tensors(on_host, monkeypatch):
    from pynsm.losses import _numerics

    if not on_host:  # the accelerator path (one fused max-|x|), run on the CPU
        monkeypatch.setattr(_numerics, "_read_on_host", lambda tensor: False)
    tensors = [torch.randn(3, 4), torch.empty(0), torch.randn(5).half()]
    assert _numerics.all_finite_on_host(tensors) is True
    assert _numerics.all_finite_on_host([]) is True
    for index, bad in ((0, float("nan")), (2, -float("inf"))):
        broken = [t.clone() for t in tensors]
        broken[index].view(-1)[-1] = bad
        assert _numerics.all_finite_on_host(broken) is False
