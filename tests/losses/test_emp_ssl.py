"""EMPSSLLoss: -TCR + inv_coef * invariance, against a float64 transcription."""

import math

import pytest
import torch

from pynsm.losses import EMPSSLLoss, emp_ssl_loss, total_coding_rate


def tcr_reference(z, eps):
    """Mean over views of 1/2 logdet(I_D + D / (B eps) Z^T Z) (eigenvalues)."""
    z = z.double()
    _, batch, dim = z.shape
    rates = []
    for view in z:
        matrix = (
            torch.eye(dim, dtype=torch.float64) + dim / (batch * eps) * view.T @ view
        )
        rates.append(
            0.5 * sum(math.log(v) for v in torch.linalg.eigvalsh(matrix).tolist())
        )
    return sum(rates) / len(rates)


def reference(views, eps, coef):
    z = torch.stack(views).double()
    mean = z.mean(dim=0)
    cosines = [
        float(z[v, b] @ mean[b] / (z[v, b].norm() * mean[b].norm()))
        for v in range(z.shape[0])
        for b in range(z.shape[1])
    ]
    return -tcr_reference(z, eps) + coef * -(sum(cosines) / len(cosines))


@pytest.mark.parametrize(("batch", "dim"), [(32, 8), (6, 20)])  # both Gram forms
@pytest.mark.parametrize("eps", [0.2, 1e-4, 50.0])
def test_matches_formula(batch, dim, eps):
    g = torch.Generator().manual_seed(batch)
    views = [torch.randn(batch, dim, generator=g) for _ in range(3)]
    value = EMPSSLLoss(tcr_eps=eps, inv_coef=5.0)(views)
    assert value.item() == pytest.approx(reference(views, eps, 5.0), rel=1e-5)


def test_coding_rate_is_maximised_not_minimised():
    g = torch.Generator().manual_seed(0)
    spread = [torch.randn(64, 8, generator=g) for _ in range(2)]
    collapsed = [torch.ones(64, 8) + 1e-3 * v for v in spread]
    # with no invariance term, spread embeddings must score lower (better)
    assert emp_ssl_loss(spread, inv_coef=0.0) < emp_ssl_loss(collapsed, inv_coef=0.0)
    assert total_coding_rate(torch.stack(spread)) > total_coding_rate(
        torch.stack(collapsed)
    )


def test_finite_for_extreme_scales_and_low_precision():
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(16, 8, generator=g, requires_grad=True) for _ in range(2)]
    for scale in (1e-6, 1e6):
        loss = emp_ssl_loss([v * scale for v in views])
        loss.backward()
        assert torch.isfinite(loss) and all(torch.isfinite(v.grad).all() for v in views)
    half = emp_ssl_loss([v.detach().bfloat16() for v in views])
    assert half.dtype == torch.float32 and torch.isfinite(half)


def test_stacked_input_defaults_and_errors():
    views = [torch.randn(8, 4) for _ in range(3)]
    torch.testing.assert_close(emp_ssl_loss(torch.stack(views)), emp_ssl_loss(views))
    loss_fn = EMPSSLLoss()
    assert (loss_fn.tcr_eps, loss_fn.inv_coef) == (0.2, 200.0)
    with pytest.raises(ValueError, match="tcr_eps"):
        EMPSSLLoss(tcr_eps=0.0)
    with pytest.raises(TypeError, match="inv_coef"):
        EMPSSLLoss(inv_coef=None)
    with pytest.raises(ValueError, match="same shape"):
        loss_fn([torch.randn(8, 4), torch.randn(7, 4)])
    with pytest.raises(ValueError, match="at least one"):
        loss_fn([])
