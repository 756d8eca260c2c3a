"""One lifecycle: `IterationModule.forward` runs it, the fused iteration is a strategy
inside it, chosen by the documented rule (instance attributes included), and hooks
see the same state whichever strategy runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_spd, set_competitor
from torch import nn

import pynsm

KWARGS = {"iteration_projection": torch.relu, "iteration_lr": 0.3}


def _pair(conv: bool, **kwargs):
    """Two circuits with the same weights; the second takes the general strategy
    because its `iteration_set_gradients` is replaced on the instance."""
    kwargs = {**KWARGS, **kwargs}
    encoder = (lambda: nn.Conv2d(2, 5, 3)) if conv else (lambda: nn.Linear(8, 5))
    fused = pynsm.SimilarityMatching(encoder(), 5, **kwargs)
    general = pynsm.SimilarityMatching(encoder(), 5, **kwargs)
    set_competitor(fused, random_spd(5))
    general.load_state_dict(fused.state_dict())
    own = general.iteration_set_gradients
    general.iteration_set_gradients = lambda *inputs: own(*inputs)
    assert fused.uses_fused_iteration() and not general.uses_fused_iteration()
    x = torch.randn((4, 2, 6, 6) if conv else (7, 8))
    return fused, general, x


def test_instance_converged_override_is_used():
    circuit = pynsm.SimilarityMatching(nn.Linear(8, 5), 5, **KWARGS)
    reference = pynsm.SimilarityMatching(nn.Linear(8, 5), 5, max_iterations=5, **KWARGS)
    reference.load_state_dict(circuit.state_dict())
    x = torch.randn(6, 8)
    calls = []

    def stop_after_five(*inputs):
        calls.append(circuit.iteration_idx)
        assert inputs[0] is x  # converged() gets the forward arguments
        return circuit.iteration_idx == 4

    circuit.converged = stop_after_five
    y = circuit(x)
    assert calls == [0, 1, 2, 3, 4]  # not 40 iterations
    assert circuit.iteration_idx == 4
    torch.testing.assert_close(y, reference(x))
    del circuit.converged  # back to the class's own: fused again, 40 iterations
    assert circuit.uses_fused_iteration()
    circuit(x)
    assert circuit.iteration_idx == 39


@pytest.mark.parametrize(
    "name",
    [
        "pre_iteration",
        "iteration",
        "iteration_set_gradients",
        "iteration_parameters",
        "converged",
        "post_iteration",
    ],
)
def test_every_replaced_method_runs(name):
    """A lifecycle method set on the instance is called, and the answer is the same."""
    circuit = pynsm.SimilarityMatching(nn.Linear(8, 5), 5, max_iterations=7, **KWARGS)
    x = torch.randn(6, 8)
    expected = circuit(x)
    own = getattr(circuit, name)
    calls = []

    def replacement(*args):
        calls.append(name)
        return own(*args)

    setattr(circuit, name, replacement)
    assert not circuit.uses_fused_iteration()
    torch.testing.assert_close(circuit(x), expected)
    assert calls and circuit.iteration_idx == 6


def test_binding_the_own_method_on_the_instance_keeps_the_fused_strategy():
    circuit = pynsm.SimilarityMatching(nn.Linear(8, 5), 5, **KWARGS)
    circuit.converged = circuit.converged  # the very same method
    assert circuit.uses_fused_iteration()


@pytest.mark.parametrize(
    ("kwargs", "fused"),
    [
        ({}, True),
        ({"it_optim_kwargs": {"momentum": 0.0, "weight_decay": 0}}, True),
        ({"iteration_lr": np.float32(0.5)}, True),
        ({"iteration_optimizer": torch.optim.Adam}, False),
        ({"iteration_scheduler": torch.optim.lr_scheduler.ConstantLR}, False),
        ({"it_optim_kwargs": {"momentum": 0.9}}, False),
        ({"it_optim_kwargs": {"lr": torch.tensor(0.3)}}, False),
    ],
)
def test_which_settings_allow_the_fused_strategy(kwargs, fused):
    circuit = pynsm.SimilarityMatching(nn.Linear(8, 5), 5, **kwargs)
    assert circuit.uses_fused_iteration() is fused
    assert circuit(torch.randn(3, 8)).shape == (3, 5)


def test_subclasses_keep_or_leave_the_fused_strategy():
    class Logged(pynsm.SimilarityMatching):  # adds a method, replaces none
        def describe(self):
            return "logged"

    class OwnTest(pynsm.SimilarityMatching):
        def converged(self, *inputs):
            return self.iteration_idx == 2

    assert Logged(nn.Linear(4, 3), 3).uses_fused_iteration()
    assert pynsm.SupervisedSimilarityMatching(
        nn.Linear(4, 3), 2, 3
    ).uses_fused_iteration()
    own_test = OwnTest(nn.Linear(4, 3), 3)
    assert not own_test.uses_fused_iteration()
    own_test(torch.randn(5, 4))
    assert own_test.iteration_idx == 2


def _record_hooks(circuit):
    """Register hooks that record what they see; return the record."""
    seen = {"pre": [], "iteration": [], "post": []}

    def pre(m):
        seen["pre"].append((m.iteration_idx, m.y.numel(), torch.is_grad_enabled()))

    def iteration(m):
        seen["iteration"].append(
            (
                m.iteration_idx,
                m.y.detach().clone(),
                m.iteration_loss().item(),
                torch.is_grad_enabled(),
            )
        )

    def post(m):
        seen["post"].append((m.iteration_idx, m.y.detach().clone()))

    for kind, hook in [("pre", pre), ("iteration", iteration), ("post", post)]:
        circuit.register_iteration_hook(kind, hook)
    return seen


@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize("tol", [0.0, 1e-3])
def test_hooks_see_the_same_state_on_both_strategies(conv, tol, grad):
    fused, general, x = _pair(conv, tol=tol, max_iterations=60)
    seen_fused, seen_general = _record_hooks(fused), _record_hooks(general)
    with torch.set_grad_enabled(grad):
        y_fused, y_general = fused(x), general(x)
    torch.testing.assert_close(y_fused, y_general, rtol=1e-5, atol=1e-6)
    assert seen_fused["pre"] == seen_general["pre"] == [(-1, 0, grad)]
    assert len(seen_fused["iteration"]) == len(seen_general["iteration"])
    for a, b in zip(seen_fused["iteration"], seen_general["iteration"]):
        assert a[0] == b[0] and a[3] == b[3] == grad
        torch.testing.assert_close(a[1], b[1], rtol=1e-5, atol=1e-6)
        assert a[2] == pytest.approx(b[2], rel=1e-4, abs=1e-5)
    (idx_fused, post_fused), (idx_general, post_general) = (
        seen_fused["post"][0],
        seen_general["post"][0],
    )
    assert idx_fused == idx_general == fused.iteration_idx == general.iteration_idx
    assert torch.equal(post_fused, y_fused) and torch.equal(post_general, y_general)
    if tol:
        assert fused.iteration_idx < 59  # the test stopped the loop on both


@pytest.mark.parametrize("strategy", ["fused", "general"])
def test_pre_and_post_hooks_may_return_anything(strategy):
    fused, general, x = _pair(conv=False)
    circuit = fused if strategy == "fused" else general
    expected = circuit(x)
    circuit.register_iteration_hook("pre", lambda m: torch.ones(3))
    circuit.register_iteration_hook("post", lambda m: np.ones(4))
    circuit.register_iteration_hook("post", lambda m: m.y)  # a [B, M] tensor
    torch.testing.assert_close(circuit(x), expected)
    assert circuit.iteration_idx == 39


@pytest.mark.parametrize("strategy", ["fused", "general"])
@pytest.mark.parametrize(
    ("value", "stops"),
    [
        (None, False),
        (False, False),
        (0, False),
        (torch.tensor(False), False),
        (True, True),
        (1, True),
        (torch.tensor([True]), True),
        (np.bool_(True), True),
    ],
)
def test_what_an_iteration_hook_return_value_means(strategy, value, stops):
    fused, general, x = _pair(conv=False)
    circuit = fused if strategy == "fused" else general
    circuit.register_iteration_hook(
        "iteration", lambda m: value if m.iteration_idx == 3 else None
    )
    circuit(x)
    assert circuit.iteration_idx == (3 if stops else 39)


@pytest.mark.parametrize("strategy", ["fused", "general"])
def test_an_iteration_hook_returning_several_values_is_a_clear_error(strategy):
    fused, general, x = _pair(conv=False)
    circuit = fused if strategy == "fused" else general
    before = {n: p.requires_grad for n, p in circuit.named_parameters()}
    circuit.register_iteration_hook("iteration", lambda m: m.y)
    with pytest.raises(TypeError, match=r"'iteration' hook returned a Tensor of shape"):
        circuit(x)
    assert {n: p.requires_grad for n, p in circuit.named_parameters()} == before


@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"tol": 1e-3, "max_iterations": 300}, {"iteration_projection": None}],
)
def test_fused_equals_general_with_an_instance_override(conv, kwargs):
    fused, general, x = _pair(conv, **kwargs)
    torch.testing.assert_close(fused(x), general(x), rtol=1e-5, atol=1e-6)
    assert fused.iteration_idx == general.iteration_idx


class _Doubling(pynsm.IterationModule):
    """A toy module with a fused iteration: y <- 2 y from y = x, stop above `limit`."""

    fused_replaces = ("pre_iteration", "iteration", "converged", "post_iteration")

    def __init__(self, limit=100.0, **kwargs):
        super().__init__(**kwargs)
        self.limit = limit
        self.fused_calls = 0

    def pre_iteration(self, x):
        self.value = x.clone()

    def iteration(self, x):
        self.value = 2 * self.value

    def converged(self, x):
        return bool(self.value.max() > self.limit)

    def post_iteration(self, x):
        return self.value

    def fused_iteration_supported(self):
        return True

    def fused_iteration(self, on_iteration, x):
        self.fused_calls += 1
        self.value = x.clone()
        for i in range(self.max_iterations):
            self.value = 2 * self.value
            if on_iteration is not None and on_iteration(i):
                return self.value, i
            if self.value.max() > self.limit:
                return self.value, i
        return self.value, self.max_iterations - 1


def test_the_base_runs_a_subclass_fused_iteration_by_its_rule():
    module = _Doubling(max_iterations=20)
    x = torch.tensor([1.0])
    assert module.uses_fused_iteration()
    assert module(x).item() == 128.0 and module.iteration_idx == 6
    assert module.fused_calls == 1
    # hooks go through the base on the fused strategy too
    indices = []
    module.register_iteration_hook(
        "iteration", lambda m: indices.append(m.iteration_idx) or m.iteration_idx == 2
    )
    assert module(x).item() == 8.0 and indices == [0, 1, 2]
    assert module.fused_calls == 2
    # a replaced method runs, on the general strategy
    module.converged = lambda x: False
    assert not module.uses_fused_iteration()
    indices.clear()
    assert module(x).item() == 8.0 and indices == [0, 1, 2]
    assert module.fused_calls == 2


def test_a_module_without_fused_iteration_never_takes_it():
    class Plain(pynsm.IterationModule):
        def iteration(self):
            pass

    module = Plain(max_iterations=3)
    assert not module.uses_fused_iteration()
    module()
    assert module.iteration_idx == 2
    with pytest.raises(NotImplementedError, match="no fused iteration"):
        module.fused_iteration(None)
