"""TiCo: invariance + running-covariance contrast (Zhu et al. 2022)."""

import pytest
import torch

from pynsm.losses import TiCoLoss


def tico_reference(z_a, z_b, previous_c, beta, rho):
    n = z_a.shape[0]
    x = z_a / z_a.norm(dim=1, keepdim=True)
    y = z_b / z_b.norm(dim=1, keepdim=True)
    batch_c = sum(torch.outer(x[i], x[i]) for i in range(n)) / n
    c = beta * previous_c + (1 - beta) * batch_c
    invariance = 1 - sum(x[i] @ y[i] for i in range(n)) / n
    contrast = sum(x[i] @ c @ x[i] for i in range(n)) / n
    return invariance + rho * contrast, c.detach()


def test_matches_formula_over_steps():
    loss_fn = TiCoLoss(beta=0.8, rho=5.0)
    c = torch.zeros(4, 4, dtype=torch.float64)
    for _ in range(3):
        z_a = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
        z_b = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
        value = loss_fn(z_a, z_b)
        ref, c = tico_reference(z_a, z_b, c, 0.8, 5.0)
        torch.testing.assert_close(value, ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(loss_fn.C, c)
        for g, r in zip(
            torch.autograd.grad(value, (z_a, z_b)), torch.autograd.grad(ref, (z_a, z_b))
        ):
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_update_covariance_matrix_false_keeps_state():
    loss_fn = TiCoLoss()
    assert (loss_fn.beta, loss_fn.rho, loss_fn.gather_distributed) == (0.9, 20.0, False)
    loss_fn(torch.randn(5, 3), torch.randn(5, 3))
    c = loss_fn.C.clone()
    loss_fn(torch.randn(5, 3), torch.randn(5, 3), update_covariance_matrix=False)
    torch.testing.assert_close(loss_fn.C, c)
    assert not loss_fn.C.requires_grad


def test_errors(monkeypatch):
    with pytest.raises(ValueError, match="beta"):
        TiCoLoss(beta=1.5)
    with pytest.raises(ValueError, match="z_a and z_b"):
        TiCoLoss()(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="batch size"):
        TiCoLoss()(torch.randn(1, 3), torch.randn(1, 3))
    monkeypatch.setattr(torch.distributed, "is_available", lambda: False)
    with pytest.raises(ValueError, match="gather_distributed"):
        TiCoLoss(gather_distributed=True)
