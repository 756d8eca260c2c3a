import math

import pytest
import torch
from torch import nn

from pynsm.ssl.momentum import (
    activate_requires_grad,
    cosine_schedule,
    deactivate_requires_grad,
    update_momentum,
)


def _pair():
    online = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    target = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    return online, target


@pytest.mark.parametrize("m", [0.0, 0.5, 0.9, 0.996, 1.0])
def test_ema_formula(m):
    online, target = _pair()
    before = [p.detach().clone() for p in target.parameters()]
    update_momentum(online, target, m)
    for old, new, p in zip(before, target.parameters(), online.parameters()):
        torch.testing.assert_close(new, m * old + (1 - m) * p, rtol=0, atol=1e-7)


def test_ema_leaves_online_and_buffers_alone():
    online, target = _pair()
    target[1].running_mean.fill_(3.0)
    online_before = [p.detach().clone() for p in online.parameters()]
    update_momentum(online, target, 0.9)
    assert all(torch.equal(a, b) for a, b in zip(online_before, online.parameters()))
    assert torch.all(target[1].running_mean == 3.0)


def test_ema_converges_to_online_weights():
    online, target = _pair()
    for _ in range(200):
        update_momentum(online, target, 0.9)
    for p, q in zip(online.parameters(), target.parameters()):
        torch.testing.assert_close(q, p, atol=1e-6, rtol=0)


def test_ema_bad_arguments():
    online, target = _pair()
    with pytest.raises(ValueError, match="momentum"):
        update_momentum(online, target, 1.5)
    with pytest.raises(ValueError, match="same shapes"):
        update_momentum(online, nn.Linear(3, 4), 0.5)


def test_cosine_schedule_values():
    assert cosine_schedule(0, 11, 0.996, 1.0) == pytest.approx(0.996)
    assert cosine_schedule(5, 11, 0.996, 1.0) == pytest.approx(0.998)
    assert cosine_schedule(10, 11, 0.996, 1.0) == 1.0
    assert cosine_schedule(50, 11, 0.996, 1.0) == 1.0
    assert cosine_schedule(0, 1, 0.5, 1.0) == 1.0
    expected = 1.0 - 0.004 * (1 + math.cos(math.pi * 3 / 10)) / 2
    assert cosine_schedule(3, 11, 0.996, 1.0) == pytest.approx(expected)
    values = [cosine_schedule(s, 20, 0.9, 1.0) for s in range(20)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    with pytest.raises(ValueError, match="step"):
        cosine_schedule(-1, 10, 0.9, 1.0)
    with pytest.raises(ValueError, match="max_steps"):
        cosine_schedule(0, 0, 0.9, 1.0)


def test_requires_grad_switches():
    net, _ = _pair()
    deactivate_requires_grad(net)
    assert not any(p.requires_grad for p in net.parameters())
    activate_requires_grad(net)
    assert all(p.requires_grad for p in net.parameters())


def test_warmup_cosine_warms_up_linearly_then_decays_to_zero():
    from pynsm.ssl.momentum import warmup_cosine

    total, warmup = 50, 10
    factors = [warmup_cosine(s, total, warmup) for s in range(total + 5)]
    # linear warm-up reaching exactly 1 at its last step
    assert factors[:warmup] == pytest.approx([(s + 1) / warmup for s in range(warmup)])
    assert factors[warmup] == pytest.approx(1.0)
    decay = factors[warmup:total]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    # half-way through the decay the cosine is at one half
    middle = warmup + (total - warmup) // 2
    assert warmup_cosine(middle, total, warmup) == pytest.approx(0.5)
    assert factors[total:] == [0.0] * 5
    assert warmup_cosine(0, 10) == 1.0


def test_warmup_cosine_checks_its_arguments():
    from pynsm.ssl.momentum import warmup_cosine

    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_cosine(0, 10, 11)
    with pytest.raises(ValueError, match="total_steps"):
        warmup_cosine(0, 0)
    with pytest.raises(TypeError, match="step"):
        warmup_cosine(0.5, 10)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_online_weights_leave_the_target(bad):
    online, target = _pair()
    before = [p.detach().clone() for p in target.parameters()]
    with torch.no_grad():
        online[2].bias[1] = bad
    with pytest.warns(RuntimeWarning, match="update_momentum"):
        update_momentum(online, target, 0.9)
    assert all(torch.equal(a, b) for a, b in zip(before, target.parameters()))
    with torch.no_grad():
        online[2].bias[1] = 0.5  # finite again: the average resumes
    update_momentum(online, target, 0.9)
    torch.testing.assert_close(target[2].bias, 0.9 * before[-1] + 0.1 * online[2].bias)
