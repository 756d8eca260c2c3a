"""MSNLoss against a float64 transcription of the MSN paper formula (values and input
gradients), its documented defaults, errors and numerics at extreme temperatures."""

import inspect
import math

import pytest
import torch

from pynsm.losses import (
    MSNLoss,
    power_law_distribution,
    prototype_probabilities,
    sharpen,
)


def reference_sinkhorn(probs, iterations):
    q = probs.T.clone()
    k, b = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).T


def reference_msn(
    anchors,
    targets,
    prototypes,
    temperature=0.1,
    iterations=3,
    weight=1.0,
    sharpen_t=0.25,
    prior=None,
):
    """MSN (Assran et al. 2022, eq. 1-2) in float64 with plain softmax/log."""
    anchors, targets, prototypes = (x.double() for x in (anchors, targets, prototypes))
    a = anchors / anchors.norm(dim=1, keepdim=True)
    t = targets / targets.norm(dim=1, keepdim=True)
    c = prototypes / prototypes.norm(dim=1, keepdim=True)
    p_anchor = torch.softmax(a @ c.T / temperature, dim=1)
    with torch.no_grad():
        p_target = torch.softmax(t @ c.T / temperature, dim=1)
        p_target = p_target ** (1 / sharpen_t)
        p_target = p_target / p_target.sum(dim=1, keepdim=True)
        if iterations:
            p_target = reference_sinkhorn(p_target, iterations)
        views = anchors.shape[0] // targets.shape[0]
        p_target = p_target.repeat(views, 1)
    loss = -(p_target * torch.log(p_anchor)).sum(dim=1).mean()
    mean = p_anchor.mean(dim=0)
    if prior is None:  # mean-entropy maximisation: -H(mean) + log K
        reg = (mean * torch.log(mean)).sum() + math.log(mean.shape[0])
    else:  # KL(prior || mean)
        prior = prior(mean).double()
        reg = (prior * (torch.log(prior) - torch.log(mean))).sum()
    return loss + weight * reg


def _value_and_grads(fn, anchors, targets, prototypes, dtype):
    a = anchors.to(dtype).requires_grad_(True)
    t = targets.to(dtype).requires_grad_(True)
    p = prototypes.to(dtype).requires_grad_(True)
    value = fn(a, t, p)
    value.backward()
    return value.detach().double(), a.grad.double(), p.grad.double(), t.grad


@pytest.fixture
def batch():
    return torch.randn(3 * 8, 16), torch.randn(8, 16), torch.randn(12, 16)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"temperature": 0.2, "sinkhorn_iterations": 0},
        {"sinkhorn_iterations": 5, "regularization_weight": 0.5},
        {"regularization_weight": 0.0},
    ],
)
def test_value_and_gradients_equal_float64_formula(batch, kwargs):
    ref_kwargs = {
        "temperature": kwargs.get("temperature", 0.1),
        "iterations": kwargs.get("sinkhorn_iterations", 3),
        "weight": kwargs.get("regularization_weight", 1.0),
    }
    expected = _value_and_grads(
        lambda a, t, p: reference_msn(a, t, p, **ref_kwargs), *batch, torch.float64
    )
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 2e-5)):
        got = _value_and_grads(MSNLoss(**kwargs), *batch, dtype)
        for g, e in zip(got[:3], expected[:3]):
            torch.testing.assert_close(g, e, rtol=tol, atol=tol)
        assert got[3] is None  # no gradient reaches the targets


def test_sharpen_temperature_argument(batch):
    a, t, p = batch
    got = MSNLoss()(a.double(), t.double(), p.double(), target_sharpen_temperature=0.5)
    torch.testing.assert_close(got, reference_msn(a, t, p, sharpen_t=0.5))


def test_documented_defaults():
    params = inspect.signature(MSNLoss).parameters
    assert {k: v.default for k, v in params.items()} == {
        "temperature": 0.1,
        "sinkhorn_iterations": 3,
        "regularization_weight": 1.0,
        "me_max_weight": None,
        "gather_distributed": False,
        "target_distribution": "uniform",
        "power_law_exponent": 0.25,
    }
    forward = inspect.signature(MSNLoss.forward).parameters
    assert list(forward)[1:4] == ["anchors", "targets", "prototypes"]
    assert forward["target_sharpen_temperature"].default == 0.25


def test_me_max_weight_is_deprecated_and_takes_precedence(batch):
    with pytest.warns(DeprecationWarning, match="me_max_weight"):
        loss_fn = MSNLoss(regularization_weight=1.0, me_max_weight=0.3)
    with pytest.warns(UserWarning):
        MSNLoss(me_max_weight=0.3)
    assert loss_fn.regularization_weight == 0.3
    a, t, p = (x.double() for x in batch)
    torch.testing.assert_close(loss_fn(a, t, p), reference_msn(a, t, p, weight=0.3))


def test_uniform_equals_default_and_regularization_loss(batch):
    a, t, p = batch
    torch.testing.assert_close(
        MSNLoss(target_distribution="uniform")(a, t, p), MSNLoss()(a, t, p)
    )
    mean = torch.softmax(torch.randn(7, dtype=torch.float64), 0)
    expected = (mean * mean.log()).sum() + math.log(7)
    torch.testing.assert_close(MSNLoss().regularization_loss(mean), expected)
    # exact zeros count as 0 log 0 = 0
    with_zero = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)
    torch.testing.assert_close(
        MSNLoss().regularization_loss(with_zero),
        torch.tensor(math.log(0.5) + math.log(3), dtype=torch.float64),
    )
    prior = MSNLoss(target_distribution=lambda m: torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(
        prior.regularization_loss(with_zero),
        torch.tensor(-math.log(0.5), dtype=torch.float64),
    )
    # the uniform distribution is the minimum (0) of the regulariser
    uniform = torch.full((7,), 1 / 7, dtype=torch.float64)
    assert abs(float(MSNLoss().regularization_loss(uniform))) < 1e-12


def test_power_law_and_callable_targets_equal_formula(batch):
    a, t, p = batch
    a, t, p = a.double(), t.double(), p.double()
    got = MSNLoss(target_distribution="power_law", power_law_exponent=0.7)(a, t, p)
    expected = reference_msn(
        a, t, p, prior=lambda m: power_law_distribution(m.shape[0], 0.7)
    )
    torch.testing.assert_close(got, expected)

    def prior(mean):
        return torch.softmax(-torch.arange(mean.shape[0], dtype=mean.dtype), 0)

    got = MSNLoss(target_distribution=prior, regularization_weight=2.0)(a, t, p)
    torch.testing.assert_close(got, reference_msn(a, t, p, weight=2.0, prior=prior))


def test_power_law_distribution():
    dist = power_law_distribution(5, 0.5, dtype=torch.float64)
    k = torch.arange(1, 6, dtype=torch.float64)
    torch.testing.assert_close(dist, k**-0.5 / (k**-0.5).sum())
    torch.testing.assert_close(power_law_distribution(4, 0.0), torch.full((4,), 0.25))
    with pytest.raises(ValueError, match="size"):
        power_law_distribution(0, 1.0)


def test_prototype_probabilities_and_sharpen():
    q, c = (
        torch.randn(5, 4, dtype=torch.float64),
        torch.randn(3, 4, dtype=torch.float64),
    )
    torch.testing.assert_close(
        prototype_probabilities(q, c, 0.5), torch.softmax(q @ c.T / 0.5, dim=1)
    )
    probs = torch.softmax(torch.randn(5, 3, dtype=torch.float64), dim=1)
    expected = probs**4 / (probs**4).sum(dim=1, keepdim=True)
    torch.testing.assert_close(sharpen(probs, 0.25), expected)
    with pytest.raises(ValueError, match="temperature"):
        sharpen(probs, 0.0)


def test_low_temperature_float32_is_finite_and_float64_accurate():
    a, t, p = torch.randn(2 * 32, 16), torch.randn(32, 16), torch.randn(64, 16)
    loss_fn = MSNLoss(temperature=0.01)
    expected = _value_and_grads(loss_fn, a, t, p, torch.float64)
    got = _value_and_grads(loss_fn, a, t, p, torch.float32)
    assert all(torch.isfinite(x).all() for x in got[:3])
    torch.testing.assert_close(got[0], expected[0], rtol=1e-4, atol=1e-4)
    for g, e in zip(got[1:3], expected[1:3]):
        torch.testing.assert_close(g, e, rtol=1e-3, atol=1e-3 * e.abs().max())
    # the plain formula log(p ** -q) in float32 breaks here
    an = torch.nn.functional.normalize(a, dim=1)
    pn = torch.nn.functional.normalize(p, dim=1)
    probs = torch.softmax(an @ pn.T / 0.01, dim=1)
    assert not torch.isfinite(torch.log(probs**-1.0)).all()


def test_bfloat16_autocast_is_finite(batch):
    a, t, p = (x.clone().requires_grad_(True) for x in batch)
    proj = torch.randn(16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = MSNLoss(temperature=0.01)(a @ proj, t @ proj, p @ proj)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(a.grad).all()
    assert torch.isfinite(p.grad).all()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"sinkhorn_iterations": -1}, "sinkhorn_iterations"),
        ({"regularization_weight": -1.0}, "regularization_weight"),
        ({"target_distribution": "zipf"}, "target_distribution"),
        ({"target_distribution": 3}, "target_distribution"),
    ],
)
def test_invalid_hyper_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        MSNLoss(**kwargs)


def test_gathering_without_torch_distributed(monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_available", lambda: False)
    with pytest.raises(ValueError, match="gather_distributed"):
        MSNLoss(gather_distributed=True)


@pytest.mark.parametrize(
    ("shapes", "name"),
    [
        (((8, 16), (3, 16), (5, 16)), "anchors"),  # 8 rows is not a multiple of 3
        (((8, 16), (4, 15), (5, 16)), "feature dimension"),
        (((8, 16), (4, 16), (5, 8)), "feature dimension"),
        (((8,), (4, 16), (5, 16)), "anchors"),
    ],
)
def test_mismatched_shapes(shapes, name):
    with pytest.raises(ValueError, match=name):
        MSNLoss()(*(torch.randn(s) for s in shapes))


def test_bad_sharpen_temperature(batch):
    with pytest.raises(ValueError, match="target_sharpen_temperature"):
        MSNLoss()(*batch, target_sharpen_temperature=0.0)
