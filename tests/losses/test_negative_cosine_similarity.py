"""Negative cosine similarity (SimSiam) against the plain formula."""

import pytest
import torch

from pynsm.losses import NegativeCosineSimilarity


def reference(x0, x1, dim):
    x0, x1 = torch.movedim(x0, dim, -1), torch.movedim(x1, dim, -1)
    cos = (x0 * x1).sum(-1) / (x0.norm(dim=-1) * x1.norm(dim=-1))
    return -cos.mean()


@pytest.mark.parametrize("dim", [1, 0, -1])
def test_matches_formula(dim):
    x0 = torch.randn(5, 4, 3, dtype=torch.float64, requires_grad=True)
    x1 = torch.randn(5, 4, 3, dtype=torch.float64, requires_grad=True)
    value = NegativeCosineSimilarity(dim=dim)(x0, x1)
    ref = reference(x0, x1, dim)
    torch.testing.assert_close(value, ref)
    for g, r in zip(
        torch.autograd.grad(value, (x0, x1)), torch.autograd.grad(ref, (x0, x1))
    ):
        torch.testing.assert_close(g, r)


def test_defaults_and_extremes():
    loss = NegativeCosineSimilarity()
    assert (loss.dim, loss.eps) == (1, 1e-8)
    x = torch.randn(4, 6)
    assert loss(x, x).item() == pytest.approx(-1.0, abs=1e-6)
    assert loss(x, -x).item() == pytest.approx(1.0, abs=1e-6)
    assert torch.isfinite(loss(torch.zeros(2, 3), torch.zeros(2, 3)))  # eps guards 0


def test_errors():
    with pytest.raises(ValueError, match="eps"):
        NegativeCosineSimilarity(eps=-1.0)
    with pytest.raises(ValueError, match="x0 and x1"):
        NegativeCosineSimilarity()(torch.randn(4, 3), torch.randn(5, 3))
