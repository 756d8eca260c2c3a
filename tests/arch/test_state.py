"""No surprises: a call leaves `requires_grad`, the RNG, the default dtype and the
grad mode as they were, whether it returns or raises, on both strategies."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pynsm

STRATEGIES = {
    "fused": {},
    "general": {"iteration_optimizer": torch.optim.Adam},
}


class _Boom(Exception):
    pass


def _raise(*args):
    raise _Boom


def _process_state(circuit):
    return {
        "requires_grad": {n: p.requires_grad for n, p in circuit.named_parameters()},
        "rng": torch.get_rng_state(),
        "dtype": torch.get_default_dtype(),
        "grad_mode": torch.is_grad_enabled(),
        "threads": torch.get_num_threads(),
    }


def _assert_same(before, after):
    assert after["requires_grad"] == before["requires_grad"]
    assert torch.equal(after["rng"], before["rng"])
    assert after["dtype"] == before["dtype"]
    assert after["grad_mode"] == before["grad_mode"]
    assert after["threads"] == before["threads"]


def _circuit(strategy, **kwargs):
    circuit = pynsm.SupervisedSimilarityMatching(
        nn.Conv2d(1, 4, 3),
        3,
        4,
        iteration_projection=torch.relu,
        iteration_lr=0.3,
        **STRATEGIES[strategy],
        **kwargs,
    )
    circuit.encoders[0].bias.requires_grad_(False)  # a frozen parameter stays frozen
    return circuit


def _inputs():
    return torch.randn(5, 1, 6, 6), torch.eye(3)[torch.tensor([0, 1, 2, 1, 0])]


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("tol", [0.0, 1e-3])
def test_forward_loss_backward_leave_process_state(strategy, tol):
    circuit = _circuit(strategy, tol=tol)
    x, labels = _inputs()
    before = _process_state(circuit)
    y = circuit(x, labels)
    circuit.loss(x, labels, y).backward()
    circuit(x)  # inference
    _assert_same(before, _process_state(circuit))
    assert not y.requires_grad


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize(
    "where", ["pre_hook", "iteration_hook", "post_hook", "encoder", "label"]
)
def test_a_failed_call_leaves_process_state(strategy, where):
    circuit = _circuit(strategy)
    x, labels = _inputs()
    before = _process_state(circuit)
    if where.endswith("_hook"):
        circuit.register_iteration_hook(where[: -len("_hook")], _raise)
        error = _Boom
    elif where == "encoder":
        circuit.encoders[0].register_forward_hook(_raise)
        error = _Boom
    else:  # a bad label
        labels, error = labels[:, :2], ValueError
    with pytest.raises(error):
        circuit(x, labels)
    _assert_same(before, _process_state(circuit))
    # and the module is usable again, with nothing of the failed call kept
    assert circuit.y.numel() == 0 and circuit._Wx_sum is None
    assert circuit.iteration_optimizer is None


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_a_failed_call_under_no_grad_and_float64_default(strategy):
    circuit = _circuit(strategy).double()
    x, labels = (t.double() for t in _inputs())
    circuit.register_iteration_hook("iteration", _raise)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with torch.no_grad():
            before = _process_state(circuit)
            with pytest.raises(_Boom):
                circuit(x, labels)
            _assert_same(before, _process_state(circuit))
    finally:
        torch.set_default_dtype(default)
