"""The mathematics of the circuits: fixed points, gradients, what they learn."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from conftest import random_spd, set_competitor
from torch import nn

import pynsm
from pynsm.arch import _fused, similarity


def _relu_circuit(encoder, out, **kwargs):
    return pynsm.SimilarityMatching(
        encoder, out, iteration_projection=torch.relu, **kwargs
    )


class GeneralPath(pynsm.SimilarityMatching):
    """Overriding a lifecycle method sends forward() to the general strategy."""

    def iteration(self, *args):
        super().iteration(*args)


@pytest.mark.parametrize("conv", [False, True])
def test_kkt_conditions_at_convergence(conv):
    """y = argmin_{y >= 0} 2 y^T M y - 4 y^T b: y >= 0, g = M y - b >= 0, y * g = 0."""
    dtype = torch.float64
    encoder = nn.Conv2d(2, 5, 3) if conv else nn.Linear(7, 5)
    circuit = _relu_circuit(
        encoder, 5, iteration_lr=0.4, max_iterations=3000, tol=1e-13
    ).to(dtype)
    set_competitor(circuit, random_spd(5, dtype=dtype))
    x = torch.randn((6, 2, 7, 7) if conv else (6, 7), dtype=dtype)
    y = circuit(x)
    assert circuit.iteration_idx < 2999  # converged
    with torch.no_grad():
        b = encoder(x)
        g = torch.einsum("ij,bj...->bi...", circuit.competitor.weight, y) - b
    assert y.dtype == dtype
    assert (y >= 0).all()
    assert (y > 0).any() and (y == 0).any()
    assert (g >= -1e-10).all()
    assert (y * g).abs().max() < 1e-10


def test_linear_fixed_point():
    """Without projection, y converges to M^{-1} b."""
    dtype = torch.float64
    circuit = pynsm.SimilarityMatching(
        nn.Linear(6, 4), 4, iteration_lr=0.5, max_iterations=2000
    ).to(dtype)
    M = random_spd(4, dtype=dtype)
    set_competitor(circuit, M)
    x = torch.randn(9, 6, dtype=dtype)
    y = circuit(x)
    expected = torch.linalg.solve(M, circuit.encoder(x).detach().t()).t()
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)


def test_fused_update_equals_autograd_of_iteration_loss():
    """Each fused step is y <- relu(y - lr * grad_y iteration_loss(y))."""
    lr = 0.3
    circuit = _relu_circuit(nn.Conv2d(1, 4, 3), 4, iteration_lr=lr, max_iterations=6)
    set_competitor(circuit, random_spd(4))
    iterates, grads = [], []

    def record(module):
        y = module.y.detach().clone().requires_grad_(True)
        fused_y = module.y
        module.y = y  # evaluate the iteration loss at this iterate
        loss = module.iteration_loss()
        (grad,) = torch.autograd.grad(loss, y)
        module.y = fused_y
        iterates.append(y.detach())
        grads.append(grad)

    circuit.register_iteration_hook("iteration", record)
    circuit(torch.randn(3, 1, 6, 6))
    assert len(iterates) == 6
    for k in range(5):
        expected = torch.relu(iterates[k] - lr * grads[k])
        torch.testing.assert_close(iterates[k + 1], expected, rtol=1e-5, atol=1e-6)
        assert not torch.equal(iterates[k + 1], iterates[k])


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"tol": 1e-3, "max_iterations": 200},
        {"iteration_projection": None},
        # a projection that is not known to act element-wise
        {"iteration_projection": lambda y: y.clamp(min=0, max=0.3)},
        {"it_optim_kwargs": {"lr": 0.2, "momentum": 0}},
    ],
)
@pytest.mark.parametrize("conv", [False, True])
def test_fast_path_equals_general_path(conv, kwargs):
    kwargs = {"iteration_projection": torch.relu, "iteration_lr": 0.3, **kwargs}
    encoder = nn.Conv2d(2, 5, 3) if conv else nn.Linear(8, 5)
    fast = pynsm.SimilarityMatching(encoder, 5, **kwargs)
    general = GeneralPath(copy.deepcopy(encoder), 5, **kwargs)
    set_competitor(fast, random_spd(5))
    general.load_state_dict(fast.state_dict())
    assert fast.uses_fused_iteration() and not general.uses_fused_iteration()
    x = torch.randn((4, 2, 6, 6) if conv else (7, 8))
    y_fast, y_general = fast(x), general(x)
    torch.testing.assert_close(y_fast, y_general, rtol=1e-5, atol=1e-6)
    assert fast.iteration_idx == general.iteration_idx
    assert y_fast.is_contiguous()


def test_supervised_fast_path_equals_general_path():
    class General(pynsm.SupervisedSimilarityMatching):
        def converged(self, *args):
            return super().converged(*args)

    kwargs = {"iteration_projection": torch.relu, "iteration_lr": 0.3, "tol": 1e-4}
    fast = pynsm.SupervisedSimilarityMatching(nn.Conv2d(1, 4, 3), 3, 4, **kwargs)
    general = General(nn.Conv2d(1, 4, 3), 3, 4, **kwargs)
    set_competitor(fast, random_spd(4))
    general.load_state_dict(fast.state_dict())
    x = torch.randn(5, 1, 6, 6)
    labels = torch.eye(3)[torch.tensor([0, 1, 2, 2, 0])]
    for args in [(x, labels), (x,)]:
        torch.testing.assert_close(fast(*args), general(*args), rtol=1e-5, atol=1e-6)
        assert fast.iteration_idx == general.iteration_idx


def test_blocked_iteration_equals_whole_iteration(monkeypatch, one_thread):
    """Single-threaded on the CPU, samples are iterated in cache-sized blocks."""
    circuit = _relu_circuit(nn.Conv2d(1, 6, 3), 6, iteration_lr=0.3)
    set_competitor(circuit, random_spd(6))
    x = torch.randn(5, 1, 9, 9)  # 5 samples of 6 * 49 = 294 elements
    whole = circuit(x)
    monkeypatch.setattr(similarity, "_CPU_BLOCK_ELEMENTS", 2 * 294)  # 2 per block
    calls = []
    run_in_blocks = _fused._run_in_blocks

    def spy(drive, update, max_iterations, project_, chunk_rows):
        calls.append(chunk_rows)
        return run_in_blocks(drive, update, max_iterations, project_, chunk_rows)

    monkeypatch.setattr(_fused, "_run_in_blocks", spy)
    blocked = circuit(x)
    assert calls == [2]
    assert torch.equal(circuit(x), blocked)
    torch.testing.assert_close(blocked, whole, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("check_every", [2, 3, 7])
def test_deferred_convergence_check_gives_same_answer(check_every):
    """Checking the converged flag every few iterations changes nothing."""
    rows, channels, lr = 50, 6, 0.3
    drive = lr * torch.randn(rows, channels, dtype=torch.float64)
    update = _fused.make_update(random_spd(channels, dtype=torch.float64), lr, False)
    y1, idx1 = _fused.run_fused_iteration(
        drive, update, 300, torch.Tensor.relu_, tol=1e-6, check_every=1
    )
    y2, idx2 = _fused.run_fused_iteration(
        drive, update, 300, torch.Tensor.relu_, tol=1e-6, check_every=check_every
    )
    assert 1 <= idx1 < 299
    assert idx1 == idx2
    assert torch.equal(y1, y2)


def _raw_competitor_gradient(circuit, x, y):
    """d loss / d M computed by hand: 2 sum_s y_s y_s^T / numel(y) - 2 M / m."""
    rows = y.movedim(1, -1).reshape(-1, y.shape[1])
    M = circuit.competitor.weight.detach()
    return 2 * rows.t() @ rows / y.numel() - 2 * M / y.shape[1]


@pytest.mark.parametrize("copier", [None, copy.deepcopy, "pickle"])
def test_competitor_gradient_is_scaled_by_minus_one_over_tau(copier):
    tau = 0.25
    circuit = _relu_circuit(nn.Conv2d(1, 4, 3), 4, tau=tau, iteration_lr=0.3)
    set_competitor(circuit, random_spd(4))
    if copier == "pickle":
        circuit = pickle.loads(pickle.dumps(circuit))
    elif copier is not None:
        circuit = copier(circuit)
    x = torch.randn(3, 1, 7, 7)
    y = circuit(x)
    circuit.loss(x, y).backward()
    raw = _raw_competitor_gradient(circuit, x, y)
    torch.testing.assert_close(
        circuit.competitor.weight.grad, -raw / tau, rtol=1e-5, atol=1e-6
    )
    # and exactly one hook: a second registration would scale twice
    hooks = circuit.competitor.weight._backward_hooks
    assert sum(isinstance(h, similarity._ScaleGradient) for h in hooks.values()) == 1


def test_linear_circuit_recovers_principal_subspace():
    """Linear similarity matching on low-rank data learns its principal subspace."""
    d, k = 12, 3
    basis, _ = torch.linalg.qr(torch.randn(d, k))
    latent = torch.randn(1000, k) * torch.tensor([1.0, 0.8, 0.6])
    x = latent @ basis.t() + 0.05 * torch.randn(1000, d)
    circuit = pynsm.SimilarityMatching(
        nn.Linear(d, k, bias=False), k, tau=0.5, iteration_lr=0.3, max_iterations=60
    )
    optimizer = torch.optim.SGD(circuit.parameters(), lr=0.02)

    def subspace_error():
        q, _ = torch.linalg.qr(circuit.encoder.weight.detach().t())
        return torch.linalg.matrix_norm(q @ q.t() - basis @ basis.t(), 2)

    assert subspace_error() > 0.5
    for _ in range(8):
        for batch in x.split(50):
            y = circuit(batch)
            loss = circuit.loss(batch, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    assert subspace_error() < 0.05


def test_supervised_circuit_beats_raw_pixels_on_digits(one_thread):
    sklearn = pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    assert sklearn
    images, labels = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        images / 16, labels, test_size=0.25, stratify=labels, random_state=0
    )

    def readout_accuracy(train_features, test_features):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=500))
        return model.fit(train_features, y_train).score(test_features, y_test)

    raw_accuracy = readout_accuracy(x_train, x_test)

    torch.manual_seed(0)
    train = torch.tensor(x_train, dtype=torch.float32).view(-1, 1, 8, 8)
    test = torch.tensor(x_test, dtype=torch.float32).view(-1, 1, 8, 8)
    onehot = torch.nn.functional.one_hot(torch.tensor(y_train), 10).float()
    circuit = pynsm.SupervisedSimilarityMatching(
        nn.Conv2d(1, 32, 3), 10, 32, iteration_projection=torch.relu, iteration_lr=0.1
    )
    optimizer = torch.optim.SGD(circuit.parameters(), lr=0.01)
    for _ in range(3):
        for idx in torch.randperm(len(train)).split(32):
            y = circuit(train[idx], onehot[idx])
            loss = circuit.loss(train[idx], onehot[idx], y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    def features(images):  # inference: no labels
        return nn.functional.max_pool2d(circuit(images), 2).flatten(1).numpy()

    circuit_accuracy = readout_accuracy(features(train), features(test))
    assert raw_accuracy < 0.975
    assert circuit_accuracy > raw_accuracy + 0.005
