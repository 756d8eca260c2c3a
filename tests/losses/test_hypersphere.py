"""Alignment + uniformity (Wang & Isola 2020) against plain pairwise loops."""

import math

import pytest
import torch

from pynsm.losses import HypersphereLoss


def hypersphere_reference(z_a, z_b, t, lam, alpha):
    x = z_a / z_a.norm(dim=1, keepdim=True)
    y = z_b / z_b.norm(dim=1, keepdim=True)
    n = x.shape[0]
    align = sum((x[i] - y[i]).norm() ** alpha for i in range(n)) / n

    def uniform(z):
        terms = [
            torch.exp(-t * ((z[i] - z[j]) ** 2).sum())
            for i in range(n)
            for j in range(i + 1, n)
        ]
        return torch.log(sum(terms) / len(terms))

    return align + lam * (uniform(x) + uniform(y)) / 2


@pytest.mark.parametrize(
    "t,lam,alpha", [(1.0, 1.0, 2.0), (2.0, 0.5, 1.0), (3.0, 2.0, 3.0)]
)
def test_matches_formula(t, lam, alpha):
    z_a = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    z_b = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    value = HypersphereLoss(t, lam, alpha)(z_a, z_b)
    ref = hypersphere_reference(z_a, z_b, t, lam, alpha)
    torch.testing.assert_close(value, ref, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(value, (z_a, z_b))
    ref_grads = torch.autograd.grad(ref, (z_a, z_b))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12)


def test_defaults_and_collapse():
    loss = HypersphereLoss()
    assert (loss.t, loss.lam, loss.alpha) == (1.0, 1.0, 2.0)
    z = torch.ones(4, 3, requires_grad=True)
    value = loss(z, z)  # aligned and collapsed: alignment 0, uniformity log(1) = 0
    assert value.item() == pytest.approx(0.0, abs=1e-6)
    (grad,) = torch.autograd.grad(value, z)
    assert torch.isfinite(grad).all()  # pdist-based forms give NaN here


def test_large_t_float32_finite():
    z_a, z_b = torch.randn(32, 8), torch.randn(32, 8)
    value = HypersphereLoss(t=200.0)(z_a, z_b)
    ref = HypersphereLoss(t=200.0)(z_a.double(), z_b.double())
    assert torch.isfinite(value)
    assert abs(value.item() - ref.item()) <= 1e-4 * abs(ref.item())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(HypersphereLoss()(z_a, z_b))
    assert math.isfinite(ref.item())


def test_errors():
    with pytest.raises(ValueError, match="t must"):
        HypersphereLoss(t=0.0)
    with pytest.raises(ValueError, match="alpha"):
        HypersphereLoss(alpha=-1.0)
    with pytest.raises(ValueError, match="z_a and z_b"):
        HypersphereLoss()(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="batch size"):
        HypersphereLoss()(torch.randn(1, 3), torch.randn(1, 3))
