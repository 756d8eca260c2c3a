"""VICReg against eq. 1-6 of Bardes et al. 2022 (authors' weighting)."""

import pytest
import torch

from pynsm.losses import (
    VICRegLoss,
    covariance_loss,
    invariance_loss,
    variance_loss,
)


def vicreg_reference(z_a, z_b, lam, mu, nu, eps):
    """Plain loops over features for a [B, D] pair of views."""
    n, d = z_a.shape
    invariance = sum(((z_a[i] - z_b[i]) ** 2).sum() for i in range(n)) / (n * d)

    def variance(z):
        return (
            sum(
                torch.relu(
                    1
                    - torch.sqrt(
                        ((z[:, j] - z[:, j].mean()) ** 2).sum() / (n - 1) + eps
                    )
                )
                for j in range(d)
            )
            / d
        )

    def covariance(z):
        zc = z - z.mean(0)
        total = 0.0
        for j in range(d):
            for k in range(d):
                if j != k:
                    total = total + ((zc[:, j] * zc[:, k]).sum() / (n - 1)) ** 2
        return total / d

    return (
        lam * invariance
        + mu * 0.5 * (variance(z_a) + variance(z_b))
        + nu * (covariance(z_a) + covariance(z_b))
    )


@pytest.mark.parametrize("params", [(25.0, 25.0, 1.0, 1e-4), (1.0, 2.0, 3.0, 0.1)])
def test_matches_formula(params):
    z_a = (0.5 * torch.randn(8, 5, dtype=torch.float64)).requires_grad_()
    z_b = (0.5 * torch.randn(8, 5, dtype=torch.float64)).requires_grad_()
    lam, mu, nu, eps = params
    value = VICRegLoss(lam, mu, nu, eps=eps)(z_a, z_b)
    grads = torch.autograd.grad(value, (z_a, z_b))
    ref = vicreg_reference(z_a, z_b, lam, mu, nu, eps)
    ref_grads = torch.autograd.grad(ref, (z_a, z_b))
    torch.testing.assert_close(value, ref, rtol=1e-12, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_defaults():
    loss = VICRegLoss()
    assert (loss.lambda_param, loss.mu_param, loss.nu_param) == (25.0, 25.0, 1.0)
    assert loss.eps == 0.0001 and loss.gather_distributed is False


def test_middle_dimensions_average_per_position():
    z_a = torch.randn(6, 3, 4, dtype=torch.float64)
    z_b = torch.randn(6, 3, 4, dtype=torch.float64)
    per_position = [VICRegLoss()(z_a[:, p], z_b[:, p]) for p in range(3)]
    torch.testing.assert_close(VICRegLoss()(z_a, z_b), torch.stack(per_position).mean())


def test_term_functions():
    x, y = torch.zeros(4, 3), torch.ones(4, 3)
    assert invariance_loss(x, y).item() == 1.0
    assert variance_loss(x, eps=0.0).item() == 1.0  # collapsed features
    wide = torch.randn(1000, 3) * 10
    assert variance_loss(wide).item() == 0.0  # std above 1: no penalty
    assert covariance_loss(torch.eye(3).repeat(10, 1) - 1 / 3).item() > 0


def test_float32_and_bf16_finite():
    z_a, z_b = torch.randn(64, 32), torch.randn(64, 32)
    value = VICRegLoss()(z_a, z_b)
    ref = VICRegLoss()(z_a.double(), z_b.double())
    assert abs(value.item() - ref.item()) <= 1e-5 * ref.item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(VICRegLoss()(z_a, z_b))


def test_errors(monkeypatch):
    with pytest.raises(ValueError, match="eps"):
        VICRegLoss(eps=-1.0)
    with pytest.raises(ValueError, match="z_a and z_b"):
        VICRegLoss()(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="batch size"):
        VICRegLoss()(torch.randn(1, 3), torch.randn(1, 3))
    monkeypatch.setattr(torch.distributed, "is_available", lambda: False)
    with pytest.raises(ValueError, match="gather_distributed"):
        VICRegLoss(gather_distributed=True)


def _projector_outputs(dtype, batch=64, dim=32, scale=100.0):
    """Unnormalised projector outputs: exactly representable in ``dtype``."""
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(batch, dim, generator=g) * scale).to(dtype).requires_grad_()
        for _ in range(2)
    ]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_give_the_float32_loss(dtype):
    # fp16: x.T @ x of scale-100 features overflows 65504; bf16: 8-bit mantissas
    z_a, z_b = _projector_outputs(dtype)
    value = VICRegLoss()(z_a, z_b)
    ref_a, ref_b = (z.detach().float().requires_grad_() for z in (z_a, z_b))
    ref = VICRegLoss()(ref_a, ref_b)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, ref, rtol=1e-6, atol=0)
    value.backward()
    ref.backward()
    for z, r in ((z_a, ref_a), (z_b, ref_b)):
        assert z.grad.dtype == dtype
        torch.testing.assert_close(z.grad, r.grad.to(dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_gives_the_float32_loss(dtype):
    z_a, z_b = (z.detach().float() for z in _projector_outputs(torch.float32))
    ref = VICRegLoss()(z_a, z_b)
    with torch.autocast("cpu", dtype=dtype):
        value = VICRegLoss()(z_a, z_b)
    torch.testing.assert_close(value, ref, rtol=1e-6, atol=0)


def test_term_functions_in_half_precision():
    x = _projector_outputs(torch.float16)[0].detach()
    for term in (variance_loss, covariance_loss):
        torch.testing.assert_close(term(x), term(x.float()), rtol=1e-6, atol=0)
    y = x.flip(0)
    torch.testing.assert_close(
        invariance_loss(x, y), invariance_loss(x.float(), y.float())
    )
