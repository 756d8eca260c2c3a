"""`solver="accelerated"`: the optimality conditions of what it returns, what `tol`
and `max_iterations` mean for it, hooks and overrides, and its errors."""

from __future__ import annotations

import pytest
import torch
from conftest import random_spd, set_competitor
from torch import nn

from pynsm.arch import SimilarityMatching, SupervisedSimilarityMatching, _accelerated
from pynsm.train.task import fixed_point_residual

CHANNELS = 8


def _circuit(relu, dtype=torch.float64, spatial=False, low=0.1, high=1.8, **kwargs):
    """A circuit whose `M` has eigenvalues in [low, high] (condition 18 by default)."""
    torch.manual_seed(0)
    encoder = nn.Conv2d(2, CHANNELS, 3) if spatial else nn.Linear(6, CHANNELS)
    kwargs.setdefault("solver", "accelerated")
    kwargs.setdefault("max_iterations", 2000)
    circuit = SimilarityMatching(
        encoder,
        CHANNELS,
        iteration_projection=torch.relu if relu else None,
        **kwargs,
    ).to(dtype)
    set_competitor(circuit, random_spd(CHANNELS, low, high, dtype=dtype))
    x = torch.randn((12, 2, 7, 7) if spatial else (40, 6), dtype=dtype)
    return circuit, x


def _drive(circuit, x):
    with torch.no_grad():
        return circuit.encoder(x)


def _gradient(circuit, y, b):
    """`M y - b` (the gradient of the inner problem), channels on dim 1."""
    with torch.no_grad():
        return torch.einsum("ij,bj...->bi...", circuit.competitor.weight, y) - b


def _linear_violation(circuit, y, b) -> float:
    """`||M y - b|| / ||b||`."""
    return float(_gradient(circuit, y, b).norm() / b.norm())


def _kkt_violation(circuit, y, b) -> float:
    """The largest violation of the KKT conditions of `min 1/2 y^T M y - b^T y`
    over `y >= 0`, scaled by `||b||`: `y >= 0`, `M y - b >= 0` where `y = 0`,
    `M y - b = 0` where `y > 0`."""
    scale = float(b.norm())
    g = _gradient(circuit, y, b)
    negative_y = float((-y).clamp_min(0).max()) / scale
    free = y > 0
    free_violation = float(g[free].abs().max()) / scale if free.any() else 0.0
    active_violation = float((-g[~free]).clamp_min(0).max()) / scale
    return max(negative_y, free_violation, active_violation)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("spatial", [False, True])
def test_linear_solution_solves_m_y_equals_b(dtype, spatial):
    circuit, x = _circuit(False, dtype, spatial, tol=1e-6)
    y = circuit(x)
    b = _drive(circuit, x)
    assert _linear_violation(circuit, y, b) < 1e-5
    assert circuit.iteration_idx == 0  # the direct solve, nothing to refine
    # the check can fail: the plain steps in the same number of iterations do not
    plain, _ = _circuit(False, dtype, spatial, solver="gradient", max_iterations=1)
    assert _linear_violation(plain, plain(x), b) > 1e-2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("spatial", [False, True])
def test_relu_solution_satisfies_kkt(dtype, spatial):
    tol = 1e-6 if dtype == torch.float32 else 1e-8
    circuit, x = _circuit(True, dtype, spatial, tol=tol)
    y = circuit(x)
    b = _drive(circuit, x)
    assert (y == 0).any() and (y > 0).any()  # both kinds of condition are tested
    assert _kkt_violation(circuit, y, b) < 1e-5
    assert circuit.iteration_idx < 1999
    # the check can fail: a few plain steps are not there yet
    plain, _ = _circuit(True, dtype, spatial, solver="gradient", max_iterations=3)
    assert _kkt_violation(plain, plain(x), b) > 1e-5


def test_same_fixed_point_as_many_plain_steps():
    for relu in (False, True):
        circuit, x = _circuit(relu, tol=1e-12)
        plain, _ = _circuit(relu, solver="gradient", max_iterations=3000)
        torch.testing.assert_close(circuit(x), plain(x), atol=1e-9, rtol=0)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("tol", [1e-3, 1e-6, 1e-9])
@pytest.mark.parametrize("lr", [1.0, 0.3, 3.0])
def test_tol_is_the_relative_fixed_point_residual(relu, tol, lr):
    # T is one plain step of the circuit's own iteration_lr
    circuit, x = _circuit(relu, tol=tol, iteration_lr=lr)
    y = circuit(x)
    residual = float(fixed_point_residual(circuit, y, [_drive(circuit, x)]))
    assert residual <= tol


def test_a_smaller_tol_takes_more_steps_and_stops_early():
    steps = []
    for tol in (1e-3, 1e-9):
        circuit, x = _circuit(True, tol=tol)
        circuit(x)
        steps.append(circuit.iteration_idx + 1)
    assert steps[0] < steps[1] < 2000
    # under ReLU the residual is first looked at after ADAPT_AT steps
    assert steps[0] >= _accelerated.ADAPT_AT + 1


def test_tol_zero_runs_exactly_max_iterations():
    circuit, x = _circuit(True, tol=0.0, max_iterations=37)
    circuit(x)
    assert circuit.iteration_idx == 36


@pytest.mark.parametrize("relu", [False, True])
def test_max_iterations_is_a_cap(relu):
    circuit, x = _circuit(relu, tol=1e-15, max_iterations=5, low=1e-3)
    circuit(x)
    assert circuit.iteration_idx <= 4
    circuit.max_iterations = 0
    y = circuit(x)
    assert circuit.iteration_idx == -1 and not y.any()


def test_refinement_steps_up_to_the_cap_when_tol_is_out_of_reach():
    # float32 cannot reach 1e-12: every further iteration is a refinement step,
    # which keeps the answer where it is (at rounding level) until the cap
    circuit, x = _circuit(False, torch.float32, low=1e-3, high=1.0, tol=1e-12)
    circuit.max_iterations = 6
    b = _drive(circuit, x)
    y = circuit(x)
    assert circuit.iteration_idx == 5
    assert _linear_violation(circuit, y, b) < 1e-5
    once, _ = _circuit(False, torch.float32, low=1e-3, high=1.0)
    torch.testing.assert_close(y, once(x))


def test_iteration_hooks_see_every_step_and_can_stop():
    circuit, x = _circuit(True, tol=1e-8)
    seen = []

    def record(module):
        seen.append((module.iteration_idx, module.y.clone()))

    circuit.register_iteration_hook("iteration", record)
    y = circuit(x)
    assert [i for i, _ in seen] == list(range(circuit.iteration_idx + 1))
    torch.testing.assert_close(seen[-1][1], y)
    # the hook changes nothing, and its return value stops the solve
    unwatched, _ = _circuit(True, tol=1e-8)
    torch.testing.assert_close(unwatched(x), y)
    circuit.register_iteration_hook("iteration", lambda m: m.iteration_idx == 2)
    circuit(x)
    assert circuit.iteration_idx == 2


def test_iteration_loss_is_available_in_hooks():
    circuit, x = _circuit(True, tol=1e-8)
    losses = []
    circuit.register_iteration_hook(
        "iteration", lambda m: losses.append(float(m.iteration_loss().detach()))
    )
    circuit(x)
    assert losses[-1] < losses[0]


def test_override_takes_the_general_strategy():
    circuit, x = _circuit(True, tol=1e-8)
    circuit.converged = lambda *inputs: circuit.iteration_idx == 9
    assert not circuit.uses_fused_iteration()
    y = circuit(x)
    assert circuit.iteration_idx == 9
    plain, _ = _circuit(True, solver="gradient", max_iterations=10)
    torch.testing.assert_close(y, plain(x))


def test_block_by_block_on_one_thread_reaches_tol(one_thread):
    torch.manual_seed(0)
    b = torch.randn(64, CHANNELS, dtype=torch.float64)
    weight = random_spd(CHANNELS, 0.1, 1.8, dtype=torch.float64)
    y, idx = _accelerated.solve_projected(
        b, weight, 1.0, 2000, torch.Tensor.relu_, tol=1e-9, chunk_rows=5
    )
    whole, _ = _accelerated.solve_projected(
        b, weight, 1.0, 2000, torch.Tensor.relu_, tol=1e-9
    )
    torch.testing.assert_close(y, whole, atol=1e-7, rtol=0)
    circuit = SimilarityMatching(
        nn.Identity(), CHANNELS, iteration_projection=torch.relu
    ).double()
    set_competitor(circuit, weight)
    assert float(fixed_point_residual(circuit, y, [b])) <= 1e-9


def test_supervised_circuit_and_loss_gradients():
    torch.manual_seed(0)
    circuit = SupervisedSimilarityMatching(
        nn.Linear(6, CHANNELS), 3, CHANNELS, solver="accelerated", tol=1e-9
    ).double()
    reference = SupervisedSimilarityMatching(
        nn.Linear(6, CHANNELS), 3, CHANNELS, max_iterations=3000
    ).double()
    reference.load_state_dict(circuit.state_dict())
    competitor = random_spd(CHANNELS, 0.2, 1.8, dtype=torch.float64)
    for module in (circuit, reference):
        set_competitor(module, competitor)
    x = torch.randn(10, 6, dtype=torch.float64)
    label = nn.functional.one_hot(torch.arange(10) % 3, 3).double()
    grads = []
    for module in (circuit, reference):
        y = module(x, label)
        module.loss(x, label, y).backward()
        grads.append([p.grad.clone() for p in module.parameters()])
    for mine, theirs in zip(*grads):
        torch.testing.assert_close(mine, theirs)


def test_heavy_ball_constants():
    step, beta = _accelerated.heavy_ball_constants(torch.diag(torch.tensor([1.0, 9.0])))
    assert step == pytest.approx(4 / 16) and beta == pytest.approx(0.25)
    # indefinite: no momentum, step 1 / L
    step, beta = _accelerated.heavy_ball_constants(
        torch.diag(torch.tensor([-1.0, 2.0]))
    )
    assert (step, beta) == (0.5, 0.0)
    with pytest.raises(ValueError, match="positive eigenvalue"):
        _accelerated.heavy_ball_constants(-torch.eye(2))


def test_errors():
    with pytest.raises(ValueError, match="solver must be one of"):
        SimilarityMatching(nn.Linear(2, 2), 2, solver="cg")
    with pytest.raises(ValueError, match="plain SGD"):
        SimilarityMatching(
            nn.Linear(2, 2),
            2,
            solver="accelerated",
            iteration_optimizer=torch.optim.Adam,
        )
    with pytest.raises(ValueError, match="plain SGD"):
        SimilarityMatching(
            nn.Linear(2, 2),
            2,
            solver="accelerated",
            iteration_scheduler=torch.optim.lr_scheduler.StepLR,
            it_sched_kwargs={"step_size": 1},
        )
    circuit, x = _circuit(False)
    set_competitor(circuit, torch.zeros(CHANNELS, CHANNELS, dtype=torch.float64))
    with pytest.raises(ValueError, match="singular"):
        circuit(x)
    assert circuit.y.numel() == 0  # nothing kept from the failed call


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("relu", [False, True])
def test_cuda_matches_cpu(relu):
    circuit, x = _circuit(relu, tol=1e-9)
    y = circuit(x)
    gpu = circuit.cuda()
    torch.testing.assert_close(gpu(x.cuda()).cpu(), y, atol=1e-7, rtol=0)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("spatial", [False, True])
def test_empty_batch(relu, spatial):
    circuit, x = _circuit(relu, spatial=spatial, tol=1e-6)
    y = circuit(x[:0])
    assert y.shape == (0, *circuit(x).shape[1:])


def test_linear_solve_calls_iteration_hooks_once_per_iteration():
    circuit, x = _circuit(False, tol=1e-6)
    seen = []
    circuit.register_iteration_hook(
        "iteration", lambda m: seen.append((m.iteration_idx, m.y.clone()))
    )
    y = circuit(x)
    assert [i for i, _ in seen] == [0]
    torch.testing.assert_close(seen[0][1], y)


def test_spatial_blocks_each_reach_tol_and_satisfy_kkt(one_thread):
    # channels-first blocks of 2 samples: the first block's stopping point is
    # where the others first look; every block must still reach tol on its own
    torch.manual_seed(1)
    b = torch.randn(7, CHANNELS, 30, dtype=torch.float64)
    weight = random_spd(CHANNELS, 0.1, 1.8, dtype=torch.float64)
    y, _ = _accelerated.solve_projected(
        b,
        weight,
        1.0,
        2000,
        torch.Tensor.relu_,
        tol=1e-9,
        chunk_rows=2,
        nonnegative=True,
    )
    circuit = SimilarityMatching(
        nn.Identity(), CHANNELS, iteration_projection=torch.relu
    ).double()
    set_competitor(circuit, weight)
    for start in range(0, 7, 2):
        block, drive = y[start : start + 2], b[start : start + 2]
        assert float(fixed_point_residual(circuit, block, [drive])) <= 1e-9
        assert _kkt_violation(circuit, block, drive) < 1e-7
    # the check can fail: a block stopped early would be far from it
    early, _ = _accelerated.solve_projected(
        b, weight, 1.0, 5, torch.Tensor.relu_, chunk_rows=2, nonnegative=True
    )
    assert _kkt_violation(circuit, early, b) > 1e-5


def test_other_projection_reaches_tol_at_the_same_fixed_point():
    # a projection other than ReLU (a box): the residual of the general branch
    def box(y):
        return y.clamp(0.0, 0.3)

    circuit, x = _circuit(False, tol=1e-10)
    circuit.iteration_projection = box
    y = circuit(x)
    b = _drive(circuit, x)
    assert float(fixed_point_residual(circuit, y, [b])) <= 1e-10
    assert circuit.iteration_idx < 1999
    assert (y == 0.3).any() and (y == 0).any()  # both bounds are active somewhere
    plain, _ = _circuit(False, solver="gradient", max_iterations=3000)
    plain.iteration_projection = box
    torch.testing.assert_close(y, plain(x), atol=1e-8, rtol=0)
