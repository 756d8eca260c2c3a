"""SwaVLoss against a float64 transcription of the SwaV paper (Sinkhorn codes, swapped
prediction over crops), the documented averaging, queue handling, numerics, errors."""

import inspect

import pytest
import torch

from pynsm.losses import SwaVLoss


def reference_codes(scores, iterations, epsilon):
    """Sinkhorn-Knopp of SwaV Sec. 3.1 / Alg. 1, float64, linear space."""
    q = torch.exp(scores.double() / epsilon).T  # [K, B]
    k, b = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).T


def reference_swav(high, low, queue=None, temperature=0.1, iterations=3, eps=0.05):
    crops = list(high) + list(low)
    total = 0.0
    for i, scores in enumerate(high):
        with torch.no_grad():
            outputs = scores.detach().double()
            if queue is not None:
                outputs = torch.cat((outputs, queue[i].double()))
            q = reference_codes(outputs, iterations, eps)[: scores.shape[0]]
        per_crop = 0.0
        for v, z in enumerate(crops):
            if v == i:
                continue
            p = torch.softmax(z.double() / temperature, dim=1)
            per_crop = per_crop - (q * torch.log(p)).sum(dim=1).mean()
        total = total + per_crop / (len(crops) - 1)
    return total / len(high)


def _value_and_grads(fn, crops, dtype, n_high):
    leaves = [c.to(dtype).requires_grad_(True) for c in crops]
    value = fn(leaves[:n_high], leaves[n_high:])
    value.backward()
    # a crop that predicts nothing (a single high-resolution crop) gets no gradient
    grads = [torch.zeros_like(x) if x.grad is None else x.grad for x in leaves]
    return [value.detach().double()] + [g.double() for g in grads]


@pytest.mark.parametrize(
    ("n_high", "n_low", "kwargs", "use_queue"),
    [
        (2, 0, {}, False),
        (2, 4, {}, False),
        (2, 3, {"temperature": 0.5, "sinkhorn_epsilon": 0.1}, True),
        (3, 2, {"sinkhorn_iterations": 0}, False),
        (1, 2, {"sinkhorn_iterations": 7}, True),
    ],
)
def test_value_and_gradients_equal_float64_formula(n_high, n_low, kwargs, use_queue):
    crops = [torch.randn(8, 10) for _ in range(n_high + n_low)]
    queue = [torch.randn(24, 10) for _ in range(n_high)] if use_queue else None
    ref = {
        "temperature": kwargs.get("temperature", 0.1),
        "iterations": kwargs.get("sinkhorn_iterations", 3),
        "eps": kwargs.get("sinkhorn_epsilon", 0.05),
    }
    expected = _value_and_grads(
        lambda h, lo: reference_swav(h, lo, queue, **ref), crops, torch.float64, n_high
    )
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 2e-5)):
        got = _value_and_grads(
            lambda h, lo: SwaVLoss(**kwargs)(h, lo, queue), crops, dtype, n_high
        )
        assert got[0].shape == torch.Size([])
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, rtol=tol, atol=tol)


def test_queue_changes_codes_but_not_their_rows():
    high = [torch.randn(4, 6) for _ in range(2)]
    queue = [torch.randn(32, 6) * 3 for _ in range(2)]
    with_queue = SwaVLoss()(high, [], queue)
    without = SwaVLoss()(high, [])
    assert not torch.isclose(with_queue, without)
    torch.testing.assert_close(with_queue, reference_swav(high, [], queue).float())


def test_subloss_is_cross_entropy():
    z = torch.randn(5, 7, dtype=torch.float64)
    q = torch.softmax(torch.randn(5, 7, dtype=torch.float64), dim=1)
    expected = -(q * torch.log(torch.softmax(z / 0.3, dim=1))).sum(dim=1).mean()
    torch.testing.assert_close(SwaVLoss(temperature=0.3).subloss(z, q), expected)
    with pytest.raises(ValueError, match="same shape"):
        SwaVLoss().subloss(z, q[:4])


def test_documented_defaults():
    params = inspect.signature(SwaVLoss).parameters
    assert {k: v.default for k, v in params.items()} == {
        "temperature": 0.1,
        "sinkhorn_iterations": 3,
        "sinkhorn_epsilon": 0.05,
        "sinkhorn_gather_distributed": False,
    }
    forward = inspect.signature(SwaVLoss.forward).parameters
    assert list(forward)[1:] == [
        "high_resolution_outputs",
        "low_resolution_outputs",
        "queue_outputs",
    ]
    assert forward["queue_outputs"].default is None


@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_extreme_epsilon_float32_is_finite_and_float64_accurate(scale):
    # prototype scores of unnormalised features: |score| up to ~30 / epsilon=0.01
    crops = [torch.randn(32, 64) * 3 * scale for _ in range(4)]
    loss_fn = SwaVLoss(sinkhorn_epsilon=0.01)
    expected = _value_and_grads(loss_fn, crops, torch.float64, 2)
    got = _value_and_grads(loss_fn, crops, torch.float32, 2)
    assert all(torch.isfinite(g).all() for g in got)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-4, atol=1e-4)
    for g, e in zip(got[1:], expected[1:]):
        torch.testing.assert_close(g, e, rtol=1e-3, atol=1e-4 * e.abs().max())
    # the plain algorithm's exp(score / epsilon) overflows float32 here
    assert not torch.isfinite(torch.exp(crops[0] / 0.01)).all()


def test_bfloat16_autocast_is_finite():
    features = [torch.randn(16, 32, requires_grad=True) for _ in range(4)]
    prototypes = torch.randn(32, 50)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = [f @ prototypes for f in features]
        loss = SwaVLoss(sinkhorn_epsilon=0.01)(scores[:2], scores[2:])
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(f.grad).all() for f in features)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"sinkhorn_epsilon": 0.0}, "sinkhorn_epsilon"),
        ({"sinkhorn_epsilon": -0.1}, "sinkhorn_epsilon"),
        ({"sinkhorn_iterations": -1}, "sinkhorn_iterations"),
    ],
)
def test_invalid_hyper_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SwaVLoss(**kwargs)


def test_gathering_without_torch_distributed(monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_available", lambda: False)
    with pytest.raises(ValueError, match="sinkhorn_gather_distributed"):
        SwaVLoss(sinkhorn_gather_distributed=True)


@pytest.mark.parametrize(
    ("high", "low", "queue", "name"),
    [
        ([], [(4, 5)], None, "high_resolution_outputs"),
        ([(4, 5)], [], None, "two crops"),
        ([(4, 5), (4, 6)], [], None, "high_resolution_outputs"),
        ([(4, 5), (4, 5)], [(3, 5)], None, "low_resolution_outputs"),
        ([(4, 5), (4, 5)], [], [(8, 5)], "queue_outputs"),
        ([(4, 5), (4, 5)], [], [(8, 5), (8, 4)], "queue_outputs"),
    ],
)
def test_mismatched_shapes(high, low, queue, name):
    def make(shapes):
        return [torch.randn(s) for s in shapes]

    with pytest.raises(ValueError, match=name):
        SwaVLoss()(make(high), make(low), None if queue is None else make(queue))


def test_low_temperature_float32_is_float64_accurate():
    crops = [torch.randn(16, 32) * 5 for _ in range(3)]
    loss_fn = SwaVLoss(temperature=0.01)
    expected = _value_and_grads(loss_fn, crops, torch.float64, 2)
    got = _value_and_grads(loss_fn, crops, torch.float32, 2)
    assert all(torch.isfinite(g).all() for g in got)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-4, atol=1e-3)
    for g, e in zip(got[1:], expected[1:]):
        torch.testing.assert_close(g, e, rtol=1e-3, atol=1e-4 * e.abs().max())
    # softmax(z / 0.01) underflows to 0 in float32: the plain log(p) is -inf
    assert torch.isinf(torch.log(torch.softmax(crops[2] / 0.01, dim=1))).any()
