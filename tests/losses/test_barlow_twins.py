"""Barlow Twins against Algorithm 1 of Zbontar et al. 2021."""

import pytest
import torch

from pynsm.losses import BarlowTwinsLoss


def barlow_reference(z_a, z_b, lambda_param):
    """Algorithm 1: per-view batch standardisation (unbiased std), loops over c."""
    n, d = z_a.shape
    za = (z_a - z_a.mean(0)) / z_a.std(0)
    zb = (z_b - z_b.mean(0)) / z_b.std(0)
    total = 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(za[k, i] * zb[k, j] for k in range(n)) / n
            total = total + ((1 - c_ij) ** 2 if i == j else lambda_param * c_ij**2)
    return total


@pytest.mark.parametrize("lambda_param", [0.005, 0.5])
def test_matches_algorithm_1(lambda_param):
    z_a = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    z_b = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    value = BarlowTwinsLoss(lambda_param)(z_a, z_b)
    grads = torch.autograd.grad(value, (z_a, z_b))
    ref = barlow_reference(z_a, z_b, lambda_param)
    ref_grads = torch.autograd.grad(ref, (z_a, z_b))
    torch.testing.assert_close(value, ref, rtol=1e-12, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_defaults_and_fixed_point():
    loss = BarlowTwinsLoss()
    assert loss.lambda_param == 0.005 and loss.gather_distributed is False
    # uncorrelated features identical in both views: off-diagonal c is 0 and,
    # with the unbiased std of Algorithm 1, c = (n - 1) / n * I
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    n = z.shape[0]
    expected = 2 * (1 - (n - 1) / n) ** 2
    assert loss(z, z).item() == pytest.approx(expected, rel=1e-5)


def test_constant_feature_is_finite():
    z_a, z_b = torch.randn(8, 3), torch.randn(8, 3)
    z_a[:, 0] = 2.0
    value = BarlowTwinsLoss()(z_a.requires_grad_(), z_b)
    (grad,) = torch.autograd.grad(value, z_a)
    assert torch.isfinite(value) and torch.isfinite(grad).all()


def test_float32_and_bf16_finite():
    z_a, z_b = torch.randn(64, 16) * 100, torch.randn(64, 16) * 100
    value = BarlowTwinsLoss()(z_a, z_b)
    ref = BarlowTwinsLoss()(z_a.double(), z_b.double())
    assert abs(value.item() - ref.item()) <= 1e-5 * ref.item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(BarlowTwinsLoss()(z_a, z_b))


def test_errors(monkeypatch):
    with pytest.raises(ValueError, match="lambda_param"):
        BarlowTwinsLoss(lambda_param=-1.0)
    with pytest.raises(ValueError, match="z_a and z_b"):
        BarlowTwinsLoss()(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="batch size"):
        BarlowTwinsLoss()(torch.randn(1, 3), torch.randn(1, 3))
    monkeypatch.setattr(torch.distributed, "is_available", lambda: False)
    with pytest.raises(ValueError, match="gather_distributed"):
        BarlowTwinsLoss(gather_distributed=True)
