"""PMSNLoss / PMSNCustomLoss: the documented signatures, equality with the
MSNLoss(target_distribution=...) forms, and the KL(prior || mean) regulariser."""

import inspect

import pytest
import torch

from pynsm.losses import MSNLoss, PMSNCustomLoss, PMSNLoss, power_law_distribution


def _grads(loss_fn, a, t, p):
    a, p = a.clone().requires_grad_(True), p.clone().requires_grad_(True)
    value = loss_fn(a, t, p)
    value.backward()
    return value.detach(), a.grad, p.grad


@pytest.fixture
def batch():
    return torch.randn(2 * 8, 16), torch.randn(8, 16), torch.randn(20, 16)


def test_documented_defaults():
    params = inspect.signature(PMSNLoss).parameters
    assert {k: v.default for k, v in params.items()} == {
        "temperature": 0.1,
        "sinkhorn_iterations": 3,
        "regularization_weight": 1,
        "power_law_exponent": 0.25,
        "gather_distributed": False,
    }
    params = inspect.signature(PMSNCustomLoss).parameters
    assert list(params) == [
        "target_distribution",
        "temperature",
        "sinkhorn_iterations",
        "regularization_weight",
        "gather_distributed",
    ]
    assert params["target_distribution"].default is inspect.Parameter.empty


@pytest.mark.parametrize("exponent", [0.25, 1.3])
def test_pmsn_equals_msn_power_law(batch, exponent):
    got = _grads(PMSNLoss(power_law_exponent=exponent, regularization_weight=2), *batch)
    expected = _grads(
        MSNLoss(
            target_distribution="power_law",
            power_law_exponent=exponent,
            regularization_weight=2,
        ),
        *batch,
    )
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_custom_equals_msn_callable(batch):
    def prior(mean):
        return torch.softmax(torch.linspace(1, 0, mean.shape[0]), 0)

    got = _grads(PMSNCustomLoss(target_distribution=prior), *batch)
    expected = _grads(MSNLoss(target_distribution=prior), *batch)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_regularization_loss_is_kl_prior_to_mean():
    mean = torch.softmax(torch.randn(6, dtype=torch.float64), 0)
    prior = power_law_distribution(6, 0.25, dtype=torch.float64)
    expected = (prior * (prior.log() - mean.log())).sum()
    torch.testing.assert_close(PMSNLoss().regularization_loss(mean), expected)
    # zero exactly when the mean matches the prior
    assert abs(float(PMSNLoss().regularization_loss(prior))) < 1e-12

    def uniform(m):
        return m.new_ones(m.shape[0]) / m.shape[0]

    expected = (uniform(mean) * (uniform(mean).log() - mean.log())).sum()
    torch.testing.assert_close(
        PMSNCustomLoss(uniform).regularization_loss(mean), expected
    )


def test_power_law_pulls_towards_prior():
    # one gradient step on the mean anchor probabilities lowers KL(prior || mean)
    logits = torch.zeros(10, requires_grad=True)
    loss_fn = PMSNLoss(power_law_exponent=1.0)
    before = loss_fn.regularization_loss(torch.softmax(logits, 0))
    before.backward()
    with torch.no_grad():
        after = loss_fn.regularization_loss(torch.softmax(logits - logits.grad, 0))
    assert after < before


def test_low_temperature_float32_finite(batch):
    a, t, p = batch
    got = PMSNLoss(temperature=0.01)(a, t, p)
    expected = PMSNLoss(temperature=0.01)(a.double(), t.double(), p.double())
    assert torch.isfinite(got)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)


def test_errors():
    with pytest.raises(ValueError, match="target_distribution"):
        PMSNCustomLoss(target_distribution="power_law")
    with pytest.raises(ValueError, match="temperature"):
        PMSNLoss(temperature=0)
    with pytest.raises(ValueError, match="sinkhorn_iterations"):
        PMSNLoss(sinkhorn_iterations=-1)

    def wrong_shape(mean):
        return mean.new_ones(3) / 3

    with pytest.raises(ValueError, match="target_distribution"):
        PMSNCustomLoss(wrong_shape)(
            torch.randn(4, 8), torch.randn(4, 8), torch.randn(5, 8)
        )
