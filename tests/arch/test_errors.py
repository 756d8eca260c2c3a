"""Bad input gets a clear error; a failed call leaves the module as it was."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch
from torch import nn

import pynsm


def _circuit(**kwargs):
    return pynsm.SimilarityMatching(nn.Linear(4, 3), 3, **kwargs)


def _two_encoders(**kwargs):
    return pynsm.MultiSimilarityMatching(
        [nn.Linear(4, 3), nn.Linear(5, 3)], 3, **kwargs
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"regularization": "l2"}, ValueError, "regularization"),
        ({"regularization": ["weight", "bogus"]}, ValueError, "regularization"),
        ({"regularization": ["weight"]}, ValueError, "regularization has 1"),
        ({"tau": 0}, ValueError, "tau"),
        ({"tau": -1.0}, ValueError, "tau"),
        ({"max_iterations": -1}, ValueError, "max_iterations"),
        ({"max_iterations": 2.5}, TypeError, "max_iterations"),
        ({"tol": -0.1}, ValueError, "tol"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        _two_encoders(**kwargs)


def test_bad_out_channels_and_classes():
    with pytest.raises(ValueError, match="out_channels"):
        pynsm.SimilarityMatching(nn.Linear(4, 3), 0)
    with pytest.raises(TypeError, match="out_channels"):
        pynsm.SimilarityMatching(nn.Linear(4, 3), 3.0)
    with pytest.raises(ValueError, match="num_classes"):
        pynsm.SupervisedSimilarityMatching(nn.Linear(4, 3), 0, 3)
    with pytest.raises(TypeError, match="encoders"):
        pynsm.MultiSimilarityMatching([], 3)


def test_unknown_hook_kind():
    with pytest.raises(ValueError, match="Unknown event type"):
        _circuit().register_iteration_hook("during", lambda m: None)


@pytest.mark.parametrize("general", [False, True])
def test_bad_forward_inputs(general):
    kwargs = (
        {"iteration_scheduler": torch.optim.lr_scheduler.ConstantLR} if general else {}
    )
    circuit = _two_encoders(**kwargs)
    x1, x2 = torch.randn(6, 4), torch.randn(6, 5)
    with pytest.raises(ValueError, match="no input"):
        circuit()
    with pytest.raises(ValueError, match="no input"):
        circuit(None, None)
    with pytest.raises(ValueError, match="only 2 encoders"):
        circuit(x1, x2, x2)
    with pytest.raises(ValueError, match="batch sizes"):
        circuit(x1, torch.randn(7, 5))
    wrong_width = pynsm.SimilarityMatching(nn.Linear(4, 5), 3, **kwargs)
    with pytest.raises(ValueError, match="out_channels=3"):
        wrong_width(x1)
    with pytest.raises(ValueError, match="out_channels=3"):
        wrong_width.loss(x1, torch.zeros(6, 3))


def test_bad_loss_arguments():
    circuit = _circuit()
    x = torch.randn(6, 4)
    with pytest.raises(ValueError, match="followed by the output"):
        circuit.loss(x)
    with pytest.raises(ValueError, match="y has shape"):
        circuit.loss(x, torch.zeros(5, 3))
    with pytest.raises(TypeError, match="y must be a Tensor"):
        circuit.loss(x, None)


def test_bad_labels():
    circuit = pynsm.SupervisedSimilarityMatching(nn.Linear(4, 3), 5, 3)
    x = torch.randn(6, 4)
    with pytest.raises(ValueError, match="num_classes=5"):
        circuit(x, torch.zeros(6, 4))
    with pytest.raises(ValueError, match="num_classes=5"):
        circuit.loss(x, torch.zeros(6, 4), torch.zeros(6, 3))
    with pytest.raises(TypeError, match="floating-point"):
        circuit(x, torch.zeros(6, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="batch sizes"):
        circuit(x, torch.zeros(7, 5))


class _Boom(Exception):
    pass


def _raise(module):
    raise _Boom


@pytest.mark.parametrize("kind", ["pre", "iteration", "post"])
@pytest.mark.parametrize("general", [False, True])
def test_requires_grad_restored_when_a_hook_raises(kind, general):
    kwargs = {"iteration_optimizer": torch.optim.Adam} if general else {}
    circuit = _two_encoders(iteration_projection=torch.relu, **kwargs)
    circuit.encoders[1].weight.requires_grad_(False)  # a frozen parameter stays so
    before = {name: p.requires_grad for name, p in circuit.named_parameters()}
    circuit.register_iteration_hook(kind, _raise)
    with pytest.raises(_Boom):
        circuit(torch.randn(6, 4), torch.randn(6, 5))
    after = {name: p.requires_grad for name, p in circuit.named_parameters()}
    assert after == before
    assert circuit.y.numel() == 0 and circuit._Wx_sum is None
    assert circuit.iteration_optimizer is None


def test_requires_grad_restored_when_an_encoder_raises():
    class Failing(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(3))

        def forward(self, x):
            raise _Boom

    circuit = pynsm.MultiSimilarityMatching(
        [nn.Linear(4, 3), Failing()], 3, iteration_optimizer=torch.optim.Adam
    )
    with pytest.raises(_Boom):
        circuit(torch.randn(6, 4), torch.randn(6, 5))
    assert all(p.requires_grad for p in circuit.parameters())


def _tensors_on(module: nn.Module):
    """Every tensor held in the plain attributes of the module and its children."""
    seen = []

    def collect(value, depth=0):
        if isinstance(value, torch.Tensor):
            seen.append(value)
        elif depth < 3 and isinstance(value, (list, tuple)):
            for v in value:
                collect(v, depth + 1)
        elif depth < 3 and isinstance(value, dict):
            for v in value.values():
                collect(v, depth + 1)
        elif depth < 3 and isinstance(value, torch.optim.Optimizer):
            collect(value.state, depth + 1)
            collect(value.param_groups, depth + 1)

    for sub in module.modules():
        for name, value in vars(sub).items():
            if name not in ("_parameters", "_buffers", "_modules"):
                collect(value)
    return seen


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"tol": 1e-4},
        {"iteration_optimizer": torch.optim.Adam, "tol": 1e-4},
    ],
)
def test_no_batch_tensor_kept_after_forward(kwargs):
    batch = 37
    circuit = pynsm.SimilarityMatching(
        nn.Conv2d(1, 3, 3), 3, iteration_projection=torch.relu, **kwargs
    )
    internal = []
    circuit.register_iteration_hook(
        "iteration", lambda m: internal.append(m.y) and False
    )
    y = circuit(torch.randn(batch, 1, 5, 5))
    circuit.loss(torch.randn(batch, 1, 5, 5), y).backward()
    for tensor in _tensors_on(circuit):
        assert batch not in tensor.shape
    # nothing else holds the iterates either: once we let go, they are freed

    refs = [weakref.ref(t) for t in internal]
    internal.clear()
    del y
    assert all(r() is None for r in refs)


def test_hooks_see_the_iteration_and_can_stop_it():
    circuit = _circuit(iteration_projection=torch.relu, max_iterations=30)
    events = []
    circuit.register_iteration_hook("pre", lambda m: events.append(("pre",)))
    circuit.register_iteration_hook(
        "iteration",
        lambda m: (
            events.append(("it", m.iteration_idx, tuple(m.y.shape)))
            or m.iteration_idx == 4
        ),
    )
    circuit.register_iteration_hook(
        "post", lambda m: events.append(("post", m.iteration_idx, m.y.sum().item()))
    )
    y = circuit(torch.randn(6, 4))
    assert events[0] == ("pre",)
    assert events[1:6] == [("it", i, (6, 3)) for i in range(5)]
    assert events[6][:2] == ("post", 4)
    assert events[6][2] == pytest.approx(y.sum().item())
    assert circuit.iteration_idx == 4


def test_iteration_loss_outside_forward_is_an_error():
    with pytest.raises(RuntimeError, match="only available during forward"):
        _circuit().iteration_loss()


def test_user_subclass_of_iteration_loss_module():
    """The pynsm 1.0.1 extension path: autograd on iteration_loss, optimizer, hooks."""

    class Mean(pynsm.IterationLossModule):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.scale = nn.Parameter(torch.ones(()))

        def pre_iteration(self, x):
            self.m = torch.zeros(x.shape[1])
            super().pre_iteration(x)

        def iteration_parameters(self):
            return [self.m]

        def iteration_loss(self, x):
            return 0.5 * ((self.scale * x - self.m) ** 2).sum(dim=1).mean()

        def post_iteration(self, x):
            super().post_iteration(x)
            return self.m.detach()

    module = Mean(max_iterations=100, iteration_lr=0.5)
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    torch.testing.assert_close(module(x), torch.tensor([2.0, 4.0]))
    assert module.last_iteration_loss == pytest.approx(2.5)
    assert module.scale.requires_grad and module.scale.grad is None
    with torch.no_grad():  # still iterates: the iteration turns gradients on
        torch.testing.assert_close(module(x), torch.tensor([2.0, 4.0]))


def test_max_iterations_zero_returns_zeros():
    circuit = _circuit(max_iterations=0)
    y = circuit(torch.randn(6, 4))
    assert torch.equal(y, torch.zeros(6, 3)) and circuit.iteration_idx == -1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("tol", [0.0, 1e-4])
def test_cuda_matches_cpu(tol):
    circuit = pynsm.SupervisedSimilarityMatching(
        nn.Conv2d(1, 4, 3),
        3,
        4,
        iteration_projection=torch.relu,
        iteration_lr=0.3,
        tol=tol,
        max_iterations=300,
    )
    x, labels = torch.randn(5, 1, 8, 8), torch.eye(3)[torch.tensor([0, 1, 2, 1, 0])]
    y_cpu = circuit(x, labels)
    idx_cpu = circuit.iteration_idx
    circuit.cuda()
    y_gpu = circuit(x.cuda(), labels.cuda())
    assert circuit.iteration_idx == idx_cpu
    torch.testing.assert_close(y_gpu.cpu(), y_cpu, rtol=1e-4, atol=1e-5)
    circuit.loss(x.cuda(), labels.cuda(), y_gpu).backward()
    assert circuit.competitor.weight.grad.is_cuda


@pytest.mark.parametrize(
    "integer", [np.int64(3), np.int32(3), np.uint8(3), torch.tensor(3)]
)
def test_integral_scalars_are_accepted(integer):
    circuit = pynsm.SupervisedSimilarityMatching(
        nn.Linear(4, 3),
        num_classes=integer + 1,
        out_channels=integer,
        max_iterations=integer + 2,
    )
    assert (circuit.num_classes, circuit.out_channels, circuit.max_iterations) == (
        4,
        3,
        5,
    )
    assert all(
        type(v) is int
        for v in (circuit.num_classes, circuit.out_channels, circuit.max_iterations)
    )
    circuit(torch.randn(2, 4), torch.eye(4)[:2])
    assert circuit.iteration_idx == 4
    multi = pynsm.MultiSimilarityMatching([nn.Linear(4, 3)], integer)
    assert multi.out_channels == 3


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"max_iterations": "5"}, TypeError, "max_iterations"),
        ({"max_iterations": True}, TypeError, "max_iterations"),
        ({"max_iterations": np.float64(5)}, TypeError, "max_iterations"),
        ({"out_channels": 3.0}, TypeError, "out_channels"),
        ({"out_channels": 0}, ValueError, "out_channels"),
        ({"num_classes": True}, TypeError, "num_classes"),
        ({"num_classes": np.int64(0)}, ValueError, "num_classes"),
        ({"tau": [0.1]}, TypeError, "tau"),
        ({"tau": float("nan")}, ValueError, "tau"),
        ({"tol": None}, TypeError, "tol"),
        ({"tol": float("inf")}, ValueError, "tol"),
        ({"iteration_lr": "fast"}, TypeError, "iteration_lr"),
        ({"iteration_lr": 0.0}, ValueError, "iteration_lr"),
        ({"iteration_lr": float("inf")}, ValueError, "iteration_lr"),
        ({"label_bias": 1}, TypeError, "label_bias"),
        ({"regularization": None}, TypeError, "regularization"),
        ({"regularization": ("weight", "l1")}, ValueError, "regularization"),
        ({"it_optim_kwargs": [("lr", 1.0)]}, TypeError, "it_optim_kwargs"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, error, name):
    arguments = {"encoder": nn.Linear(4, 3), "num_classes": 2, "out_channels": 3}
    arguments.update(kwargs)
    with pytest.raises(error, match=name):
        pynsm.SupervisedSimilarityMatching(**arguments)


def test_a_single_module_is_not_a_list_of_encoders():
    with pytest.raises(TypeError, match=r"encoders .*\[encoder\]"):
        pynsm.MultiSimilarityMatching(nn.Sequential(nn.Linear(4, 3)), 3)
    with pytest.raises(TypeError, match="encoders"):
        pynsm.MultiSimilarityMatching(3, 3)
    circuit = pynsm.MultiSimilarityMatching(nn.ModuleList([nn.Linear(4, 3)]), 3)
    assert circuit(torch.randn(2, 4)).shape == (2, 3)


@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"tol": 1e-3}, {"iteration_optimizer": torch.optim.Adam, "tol": 1e-3}],
)
def test_empty_batch_gives_empty_output_on_one_or_two_threads(conv, kwargs):
    encoder = nn.Conv2d(1, 4, 3) if conv else nn.Linear(6, 4)
    circuit = pynsm.SimilarityMatching(
        encoder, 4, iteration_projection=torch.relu, **kwargs
    )
    x = torch.randn((0, 1, 8, 8) if conv else (0, 6))
    expected_shape = (0, 4, 6, 6) if conv else (0, 4)
    threads = torch.get_num_threads()
    outcomes = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            y = circuit(x)
            outcomes.append((tuple(y.shape), circuit.iteration_idx))
    finally:
        torch.set_num_threads(threads)
    # nothing moves in an empty batch: with a tolerance, converged at iteration 1
    expected_idx = 1 if kwargs.get("tol") else 39
    assert outcomes == [(expected_shape, expected_idx)] * 2
    with pytest.raises(ValueError, match="at least one sample"):
        circuit.loss(x, torch.zeros(expected_shape))


@pytest.mark.parametrize("general", [False, True])
def test_images_smaller_than_the_kernel(general):
    kwargs = {"iteration_optimizer": torch.optim.Adam} if general else {}
    circuit = pynsm.SimilarityMatching(nn.Conv2d(1, 4, 3), 4, **kwargs)
    x = torch.randn(5, 1, 2, 2)
    message = r"input 0 has shape \(5, 1, 2, 2\).*\(3, 3\).*kernel_size=\(3, 3\)"
    with pytest.raises(ValueError, match=message):
        circuit(x)
    with pytest.raises(ValueError, match=message):
        circuit.loss(x, torch.zeros(5, 4, 1, 1))
    assert circuit(torch.randn(5, 1, 3, 3)).shape == (5, 4, 1, 1)  # just fits


def test_kernel_check_counts_padding_dilation_and_sequential_encoders():
    encoder = nn.Sequential(nn.Conv2d(1, 4, 5, padding=1, dilation=2), nn.ReLU())
    circuit = pynsm.SimilarityMatching(encoder, 4)
    # needs 2 * (5 - 1) + 1 - 2 * 1 = 7 pixels
    with pytest.raises(ValueError, match=r"\(7, 7\).*dilation=\(2, 2\)"):
        circuit(torch.randn(2, 1, 6, 9))
    assert circuit(torch.randn(2, 1, 7, 7)).shape == (2, 4, 1, 1)
    same = pynsm.SimilarityMatching(nn.Conv2d(1, 4, 3, padding="same"), 4)
    assert same(torch.randn(2, 1, 2, 2)).shape == (2, 4, 2, 2)
    valid = pynsm.SimilarityMatching(nn.Conv1d(1, 4, 3, padding="valid"), 4)
    with pytest.raises(ValueError, match=r"input 0 has shape \(2, 1, 2\)"):
        valid(torch.randn(2, 1, 2))
    supervised = pynsm.SupervisedSimilarityMatching(nn.Conv2d(1, 4, 3), 3, 4)
    with pytest.raises(ValueError, match="input 0 has shape"):
        supervised(torch.randn(2, 1, 2, 2), torch.eye(3)[:2])
