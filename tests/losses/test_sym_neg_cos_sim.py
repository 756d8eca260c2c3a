"""Symmetrised SimSiam loss: value, stop-gradient on the projections, errors."""

import pytest
import torch

from pynsm.losses import SymNegCosineSimilarityLoss


def _cos(a, b):
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def test_value_and_stop_gradient():
    z0, p0, z1, p1 = (
        torch.randn(6, 5, dtype=torch.float64, requires_grad=True) for _ in range(4)
    )
    value = SymNegCosineSimilarityLoss()((z0, p0), (z1, p1))
    ref = -0.5 * _cos(p0, z1.detach()).mean() - 0.5 * _cos(p1, z0.detach()).mean()
    torch.testing.assert_close(value, ref)
    grads = torch.autograd.grad(value, (z0, p0, z1, p1), allow_unused=True)
    ref_grads = torch.autograd.grad(ref, (p0, p1))
    assert grads[0] is None and grads[2] is None  # projections get no gradient
    torch.testing.assert_close(grads[1], ref_grads[0])
    torch.testing.assert_close(grads[3], ref_grads[1])


def test_minimum_when_predictions_match_targets():
    z0, z1 = torch.randn(4, 3), torch.randn(4, 3)
    value = SymNegCosineSimilarityLoss()((z0, z1 * 2), (z1, z0 * 3))
    assert value.item() == pytest.approx(-1.0, abs=1e-6)


def test_errors():
    loss = SymNegCosineSimilarityLoss()
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="out0"):
        loss((x,), (x, x))
    with pytest.raises(ValueError, match="out1"):
        loss((x, x), (x, torch.randn(4, 2)))
    with pytest.raises(ValueError, match="same shape"):
        loss((x, x), (torch.randn(5, 3), torch.randn(5, 3)))
