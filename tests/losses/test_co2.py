"""CO2 regulariser: symmetric KL of the contrastive distributions (Wei et al. 2021)."""

import pytest
import torch

from pynsm.losses import CO2Regularizer


def _normalise(x):
    return x / x.norm(dim=1, keepdim=True)


def distribution(query, key, negatives, t):
    """p_i over [positive, negatives] as plain softmax of similarities / t."""
    rows = []
    for i in range(query.shape[0]):
        if negatives is None:
            negs = [key[j] for j in range(key.shape[0]) if j != i]
        else:
            negs = [negatives[:, j] for j in range(negatives.shape[1])]
        logits = torch.stack([query[i] @ key[i]] + [query[i] @ n for n in negs]) / t
        rows.append(torch.softmax(logits, dim=0))
    return torch.stack(rows)


def co2_reference(out0, out1, alpha, t, negatives=None):
    u, v = _normalise(out0), _normalise(out1)
    p = distribution(u, v, negatives, t)
    q = distribution(v, u, negatives, t)
    kl_pq = (p * torch.log(p / q)).sum(1).mean()
    kl_qp = (q * torch.log(q / p)).sum(1).mean()
    return alpha * 0.5 * (kl_pq + kl_qp)


def test_without_memory_bank_matches_formula():
    out0 = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    out1 = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    value = CO2Regularizer(alpha=0.7, t_consistency=0.3)(out0, out1)
    ref = co2_reference(out0, out1, 0.7, 0.3)
    torch.testing.assert_close(value, ref, rtol=1e-12, atol=1e-12)
    for g, r in zip(
        torch.autograd.grad(value, (out0, out1)), torch.autograd.grad(ref, (out0, out1))
    ):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_with_memory_bank_uses_bank_and_always_updates():
    reg = CO2Regularizer(alpha=1.0, t_consistency=0.5, memory_bank_size=6).double()
    first0 = torch.randn(3, 4, dtype=torch.float64)
    first1 = torch.randn(3, 4, dtype=torch.float64)
    with torch.no_grad():
        reg(first0, first1)
    torch.testing.assert_close(reg.bank[:3], _normalise(first1))  # updated
    bank = reg.bank.T.clone()  # [dim, size], as the reference expects
    out0 = torch.randn(3, 4, dtype=torch.float64)
    out1 = torch.randn(3, 4, dtype=torch.float64)
    value = reg(out0, out1)
    torch.testing.assert_close(value, co2_reference(out0, out1, 1.0, 0.5, bank))


def test_defaults_and_zero_when_views_agree():
    reg = CO2Regularizer()
    assert (reg.alpha, reg.t_consistency, reg.size) == (1, 0.05, (0,))
    z = torch.randn(4, 3)
    assert reg(z, z).item() == pytest.approx(0.0, abs=1e-6)


def test_small_temperature_float32_finite():
    out0, out1 = torch.randn(8, 4), torch.randn(8, 4)
    value = CO2Regularizer(t_consistency=0.005)(out0, out1)
    ref = CO2Regularizer(t_consistency=0.005)(out0.double(), out1.double())
    assert torch.isfinite(value)
    assert abs(value.item() - ref.item()) <= 1e-4 * abs(ref.item()) + 1e-5


def test_errors():
    with pytest.raises(ValueError, match="t_consistency"):
        CO2Regularizer(t_consistency=0.0)
    with pytest.raises(ValueError, match="size"):
        CO2Regularizer(memory_bank_size=-2)
    with pytest.raises(ValueError, match="out0 and out1"):
        CO2Regularizer()(torch.randn(4, 3), torch.randn(4, 2))
