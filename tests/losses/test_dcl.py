"""DCL / DCLW against eq. 6 (and eq. 7 weights) of Yeh et al. 2021."""

import pytest
import torch

from pynsm.losses import DCLLoss, DCLWLoss, dcl_loss, negative_mises_fisher_weights


def _normalise(x):
    return x / x.norm(dim=1, keepdim=True)


def dcl_reference(out0, out1, temperature, weights=None):
    """Eq. 6 summed over images i and both views, divided by 2B; plain loops.

    The denominator U_{i,k} sums over both views l and all j != i (one log).
    """
    u, v = _normalise(out0.double()), _normalise(out1.double())
    n = u.shape[0]
    total = 0.0
    for view, other, w in ((u, v, weights), (v, u, weights)):
        for i in range(n):
            weight = 1.0 if w is None else w(view, other)[i]
            positive = view[i] @ other[i] / temperature
            neg = sum(
                torch.exp(view[i] @ view[j] / temperature)
                + torch.exp(view[i] @ other[j] / temperature)
                for j in range(n)
                if j != i
            )
            total = total - weight * positive + torch.log(neg)
    return total / (2 * n)


def vmf_weights(sigma):
    def weights(a, b):
        s = torch.stack([a[i] @ b[i] for i in range(a.shape[0])]).detach() / sigma
        return 2 - torch.exp(s) / torch.exp(s).mean()

    return weights


def _check(loss_fn, ref_fn, out0, out1):
    a, b = out0.clone().requires_grad_(), out1.clone().requires_grad_()
    value = loss_fn(a, b)
    grads = torch.autograd.grad(value, (a, b))
    a2, b2 = out0.clone().requires_grad_(), out1.clone().requires_grad_()
    ref = ref_fn(a2, b2)
    ref_grads = torch.autograd.grad(ref, (a2, b2))
    torch.testing.assert_close(value, ref, rtol=1e-12, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("temperature", [0.1, 0.5, 0.02])
def test_dcl_matches_equation_6(temperature):
    out0 = torch.randn(5, 4, dtype=torch.float64)
    out1 = torch.randn(5, 4, dtype=torch.float64)
    _check(
        DCLLoss(temperature),
        lambda a, b: dcl_reference(a, b, temperature),
        out0,
        out1,
    )


def test_dcl_custom_weight_fn_scales_positive_term():
    def weight_fn(a, b):
        return ((a - b) ** 2).sum(dim=1)

    out0 = torch.randn(5, 4, dtype=torch.float64)
    out1 = torch.randn(5, 4, dtype=torch.float64)
    _check(
        DCLLoss(0.2, weight_fn=weight_fn),
        lambda a, b: dcl_reference(a, b, 0.2, weight_fn),
        out0,
        out1,
    )


def test_dclw_matches_von_mises_fisher_weighting():
    out0 = torch.randn(6, 3, dtype=torch.float64)
    out1 = torch.randn(6, 3, dtype=torch.float64)
    _check(
        DCLWLoss(temperature=0.1, sigma=0.5),
        lambda a, b: dcl_reference(a, b, 0.1, vmf_weights(0.5)),
        out0,
        out1,
    )
    w = negative_mises_fisher_weights(_normalise(out0), _normalise(out1), sigma=0.5)
    torch.testing.assert_close(w.mean(), torch.tensor(1.0, dtype=torch.float64))


def test_defaults():
    assert DCLLoss().temperature == 0.1 and DCLLoss().weight_fn is None
    assert DCLLoss().gather_distributed is False
    loss = DCLWLoss()
    assert (loss.temperature, loss.sigma) == (0.1, 0.5)


def test_float32_small_temperature_finite_and_accurate():
    out0, out1 = torch.randn(16, 8), torch.randn(16, 8)
    value = dcl_loss(out0, out1, temperature=0.005)
    ref = dcl_loss(out0.double(), out1.double(), temperature=0.005)
    assert torch.isfinite(value)
    assert abs(value.item() - ref.item()) <= 1e-5 * abs(ref.item())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(DCLLoss(0.05)(out0, out1))


def test_errors(monkeypatch):
    with pytest.raises(ValueError, match="temperature"):
        DCLLoss(temperature=0.0)
    with pytest.raises(ValueError, match="sigma"):
        DCLWLoss(sigma=0.0)
    with pytest.raises(ValueError, match="weight_fn"):
        DCLLoss(weight_fn=3)
    with pytest.raises(ValueError, match="out0 and out1"):
        DCLLoss()(torch.randn(4, 3), torch.randn(3, 3))
    with pytest.raises(ValueError, match="at least 2"):
        DCLLoss()(torch.randn(1, 3), torch.randn(1, 3))
    monkeypatch.setattr(torch.distributed, "is_available", lambda: False)
    with pytest.raises(ValueError, match="gather_distributed"):
        DCLLoss(gather_distributed=True)
    with pytest.raises(ValueError, match="gather_distributed"):
        DCLWLoss(gather_distributed=True)


@pytest.mark.parametrize("batch_size", [2, 7, 64])
@pytest.mark.parametrize("make", [DCLLoss, DCLWLoss])
@pytest.mark.parametrize("temperature", [0.1, 0.005])
def test_bitwise_symmetric_in_the_two_views(batch_size, make, temperature):
    generator = torch.Generator().manual_seed(batch_size)
    out0 = torch.randn(batch_size, 33, generator=generator)
    out1 = torch.randn(batch_size, 33, generator=generator)
    loss_fn = make(temperature=temperature)
    forward, swapped = loss_fn(out0, out1), loss_fn(out1, out0)
    assert torch.equal(forward, swapped), (forward - swapped).item()
    # the gradients swap with the views, too
    a0, a1 = out0.clone().requires_grad_(), out1.clone().requires_grad_()
    loss_fn(a0, a1).backward()
    b0, b1 = out0.clone().requires_grad_(), out1.clone().requires_grad_()
    loss_fn(b1, b0).backward()
    torch.testing.assert_close(a0.grad, b0.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a1.grad, b1.grad, rtol=1e-5, atol=1e-5)
