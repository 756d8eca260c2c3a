"""NT-Xent (SimCLR) and its MoCo form with a memory bank, against the paper formulas."""

import math

import pytest
import torch

from pynsm.losses import NTXentLoss, ntxent_loss


def simclr_reference(out0, out1, temperature):
    """SimCLR eq. 1, averaged over all 2B anchors, written as plain loops."""
    z = torch.cat([out0, out1]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n = out0.shape[0]
    total = 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        numerator = torch.exp(z[i] @ z[positive] / temperature)
        denominator = sum(
            torch.exp(z[i] @ z[k] / temperature) for k in range(2 * n) if k != i
        )
        total = total - torch.log(numerator / denominator)
    return total / (2 * n)


def moco_reference(out0, out1, bank, temperature):
    """MoCo eq. 1: query out0[i], positive key out1[i], negatives = bank columns."""
    q = out0.double() / out0.double().norm(dim=1, keepdim=True)
    k = out1.double() / out1.double().norm(dim=1, keepdim=True)
    total = 0.0
    for i in range(q.shape[0]):
        positive = torch.exp(q[i] @ k[i] / temperature)
        negatives = sum(
            torch.exp(q[i] @ bank[:, j] / temperature) for j in range(bank.shape[1])
        )
        total = total - torch.log(positive / (positive + negatives))
    return total / q.shape[0]


def _value_and_grads(fn, *inputs):
    inputs = [x.clone().requires_grad_() for x in inputs]
    value = fn(*inputs)
    grads = torch.autograd.grad(value, inputs)
    return value.detach(), grads


@pytest.mark.parametrize("temperature", [0.5, 0.1, 2.0, 0.02, -0.3])
def test_simclr_value_and_gradients_match_formula(temperature):
    out0 = torch.randn(6, 5, dtype=torch.float64)
    out1 = torch.randn(6, 5, dtype=torch.float64)
    ours, ours_grads = _value_and_grads(NTXentLoss(temperature), out0, out1)
    ref, ref_grads = _value_and_grads(
        lambda a, b: simclr_reference(a, b, temperature), out0, out1
    )
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    for g, r in zip(ours_grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_defaults():
    loss = NTXentLoss()
    assert loss.temperature == 0.5
    assert loss.size == (0,) and loss.gather_distributed is False
    out0, out1 = torch.randn(4, 3), torch.randn(4, 3)
    torch.testing.assert_close(
        loss(out0, out1), simclr_reference(out0, out1, 0.5).float()
    )


def test_memory_bank_entries_are_the_negatives():
    torch.manual_seed(3)
    loss = NTXentLoss(temperature=0.2, memory_bank_size=8).double()
    out0 = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    out1 = torch.randn(4, 5, dtype=torch.float64)
    loss(out0, out1)  # fills 4 entries with normalised out1 (out0 requires grad)
    bank_before = loss.bank.T.clone()  # stored [size, dim]; reference wants columns
    new0 = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    new1 = torch.randn(4, 5, dtype=torch.float64)
    value = loss(new0, new1)
    expected = moco_reference(new0, new1, bank_before, 0.2)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    # the batch itself is not used as negatives: SimCLR value differs
    assert not torch.isclose(value, simclr_reference(new0, new1, 0.2))
    (grad,) = torch.autograd.grad(value, new0)
    (ref_grad,) = torch.autograd.grad(
        moco_reference(new0, new1, bank_before, 0.2), new0
    )
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


def test_memory_bank_stores_normalised_keys_fifo_and_only_with_grad():
    loss = NTXentLoss(memory_bank_size=6).double()
    keys = [torch.randn(4, 3, dtype=torch.float64) for _ in range(3)]
    query = torch.randn(4, 3, dtype=torch.float64)
    with torch.no_grad():
        loss(query, keys[0])
    initial = loss.bank.clone()
    loss(query, keys[0])  # query does not require grad: bank untouched
    torch.testing.assert_close(loss.bank, initial)
    for key in keys:
        loss(query.clone().requires_grad_(), key)
    normalised = [k / k.norm(dim=1, keepdim=True) for k in keys]
    # batches of 4 through a bank of 6, as lightly: key0 -> 0..3; key1 -> 4, 5
    # (its last two rows dropped, back to 0); key2 -> 0..3
    expected = torch.cat([normalised[2], normalised[1][:2]])
    torch.testing.assert_close(loss.bank, expected)
    assert int(loss.bank_ptr) == 4


def test_float32_small_temperature_is_finite_and_accurate():
    out0, out1 = torch.randn(16, 8), torch.randn(16, 8)
    ours = NTXentLoss(temperature=0.01)(out0, out1)
    ref = ntxent_loss(out0.double(), out1.double(), temperature=0.01)
    assert torch.isfinite(ours)
    assert abs(ours.item() - ref.item()) <= 1e-5 * abs(ref.item())
    # the naive exp/sum form overflows here in float32
    z = torch.nn.functional.normalize(torch.cat([out0, out1]), dim=1)
    naive = torch.exp(z @ z.T / 0.001).sum()
    assert not torch.isfinite(naive)
    assert torch.isfinite(NTXentLoss(temperature=0.001)(out0, out1))


@pytest.mark.parametrize("temperature", [0.01, 0.026, 0.2])
def test_float32_accuracy_with_memory_bank(temperature):
    # both shifts of the log-sum-exp (fixed bound for t >= 0.025, row max below)
    out0, out1 = torch.randn(16, 8), torch.randn(16, 8)
    bank = torch.nn.functional.normalize(torch.randn(8, 64), dim=0)
    values = [
        ntxent_loss(out0.to(d), out1.to(d), temperature, negatives=bank.to(d))
        for d in (torch.float32, torch.float64)
    ]
    assert torch.isfinite(values[0])
    assert abs(values[0].item() - values[1].item()) <= 1e-5 * values[1].item()
    ref = moco_reference(out0.double(), out1.double(), bank.double(), temperature)
    torch.testing.assert_close(values[1], ref, rtol=1e-10, atol=0)


def test_bf16_autocast_is_finite():
    out0 = torch.randn(16, 8, requires_grad=True)
    out1 = torch.randn(16, 8)
    for memory_bank_size in (0, 32):
        loss_fn = NTXentLoss(temperature=0.05, memory_bank_size=memory_bank_size)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            value = loss_fn(out0, out1)
        (grad,) = torch.autograd.grad(value, out0)
        assert torch.isfinite(value) and torch.isfinite(grad).all()
        ref = loss_fn.__class__(temperature=0.05)(out0.double(), out1.double())
        if memory_bank_size == 0:
            assert abs(value.item() - ref.item()) < 0.05 * ref.item()


@pytest.mark.parametrize("temperature", [0.0, 1e-9, -1e-9])
def test_zero_temperature_raises(temperature):
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(temperature=temperature)


def test_negative_memory_bank_size_raises():
    with pytest.raises(ValueError, match="size"):
        NTXentLoss(memory_bank_size=-1)


def test_mismatched_shapes_raise():
    with pytest.raises(ValueError, match="out0 and out1"):
        NTXentLoss()(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="out0 and out1"):
        NTXentLoss()(torch.randn(4, 3, 2), torch.randn(4, 3, 2))
    loss = NTXentLoss(memory_bank_size=4)
    loss(torch.randn(2, 3), torch.randn(2, 3))
    with pytest.raises(ValueError, match="dimension"):
        loss(torch.randn(2, 5), torch.randn(2, 5))


def test_gather_distributed_without_torch_distributed_raises(monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_available", lambda: False)
    with pytest.raises(ValueError, match="gather_distributed"):
        NTXentLoss(gather_distributed=True)


def test_gather_distributed_single_process_equals_plain():
    out0, out1 = torch.randn(6, 4), torch.randn(6, 4)
    torch.testing.assert_close(
        NTXentLoss(gather_distributed=True)(out0, out1), NTXentLoss()(out0, out1)
    )


def test_perfect_alignment_lower_bound():
    # identical orthogonal views: the positive dominates as the temperature shrinks
    z = torch.eye(4)
    value = NTXentLoss(temperature=0.05)(z, z)
    # positive similarity 1, 6 negatives at 0: -log(e^20 / (e^20 + 6))
    expected = -math.log(math.exp(20) / (math.exp(20) + 6))
    assert abs(value.item() - expected) < 1e-6
