"""The accelerated solve of the similarity-matching fixed point (`"accelerated"`).

The plain iteration `y <- P(y - lr (M y - b))` (see `pynsm.arch._fused`) is gradient
descent on `min_y 1/2 y^T M y - b^T y` (over `y >= 0` when `P` is ReLU). Its error
shrinks by `max(|1 - lr lam_min|, |1 - lr lam_max|)` a step, `lam` the eigenvalues of
`M`: about `(kappa - 1) / (kappa + 1)` at best, `kappa = lam_max / lam_min`. This
module reaches the same fixed point in fewer, equally cheap steps:

* **no projection** -- the fixed point solves the linear system `M y = b` (whatever
  `lr > 0`). `M` is `C x C` with `C` = out_channels, a few hundred at most, and acts
  on the channel dimension only, so one factorisation (in float64) gives
  `y = M^{-1} b` for every sample and position at once: one matrix product the size
  of one plain step. When `tol > 0` the residual is checked and, should rounding
  leave it above `tol` (a nearly singular `M` in float32), each further iteration is
  a step of iterative refinement, `y <- y + M^{-1} (b - M y)`.
* **a projection** (ReLU: a non-negative quadratic program; any projection on a
  convex set) -- projected heavy-ball (Polyak) steps with the optimal constants for
  the spectrum `[mu, L]` of `M`'s symmetric part,

      y_{k+1} = P(y_k - a (M y_k - b) + beta (y_k - y_{k-1})),
      a = 4 / (sqrt(L) + sqrt(mu))^2,
      beta = ((sqrt(L) - sqrt(mu)) / (sqrt(L) + sqrt(mu)))^2,

  whose error shrinks by `(sqrt(kappa) - 1) / (sqrt(kappa) + 1)` a step near the
  solution (0.5 instead of 0.8 for `kappa = 9`): once the active set settles, each
  sample's problem is linear on its free coordinates, whose matrix is a principal
  submatrix of `M` with eigenvalues inside `[mu, L]`. Rewritten like the plain step
  it is one product per step,

      y_{k+1} = P(a b - beta y_{k-1} + B y_k),   B = (1 + beta) I - a M,

  with the drive `a b - beta y_{k-1}` written into `y_{k-1}`'s buffer: two buffers,
  no allocation per step. Measured against projected Nesterov/FISTA with restart
  and Anderson mixing (docs/benchmarks.md), it needed the fewest products per unit
  of accuracy at the lowest cost per step. The iteration has the same fixed points
  as the plain one (those of `P(y - t (M y - b)) = y` do not depend on `t > 0`).
  Safeguard: the residual is looked at every `CHECK_EVERY` steps; when it grew
  since the last look, the momentum is dropped (`y_{k-1} <- y_k`, a restart). An
  indefinite `M` (`mu <= 0`: no convex problem) gets `beta = 0`, `a = 1 / L`.

**Tolerance.** `tol` is the relative fixed-point residual of the plain step,
`||y - T(y)|| <= tol ||y||` with `T(y) = P(y - lr (M y - b))` (what
`pynsm.train.fixed_point_residual` reports), looked at every `CHECK_EVERY` steps
(one extra product then, and a host-device synchronisation on an accelerator);
`tol = 0` runs exactly `max_iterations` steps. On the CPU with cache blocks, every
block of samples stops on its own residual: all blocks below `tol` implies the whole
batch is.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ._fused import IterationCallback, make_product

#: look at the residual (and the restart test) every this many heavy-ball steps
CHECK_EVERY = 4


def solve_linear(
    b: torch.Tensor,
    competitor: torch.Tensor,
    lr: float,
    max_iterations: int,
    tol: float = 0.0,
    on_iteration: IterationCallback | None = None,
) -> tuple[torch.Tensor, int]:
    """`y = M^{-1} b` (no projection), refined while the residual exceeds `tol`.

    Args:
        b: the drive `sum_k W_k x_k`, rows `[B, C]` or channels-first `[B, C, S]`.
        competitor: `M`, `[C, C]`.
        lr: the plain step's learning rate (only in the residual of `tol`).
        max_iterations: cap on the number of iterations (the solve is iteration 0).
        tol: relative fixed-point residual to reach; `0`: the solve alone.
        on_iteration: optional callback after every iteration.

    Returns:
        `(y, last_idx)`, `y` shaped like `b`; `(zeros, -1)` when `max_iterations == 0`.
    """
    if max_iterations <= 0:
        return torch.zeros_like(b), -1
    spatial = b.ndim > 2
    matrix = competitor.to(torch.float64)
    inverse, info = torch.linalg.inv_ex(matrix)
    if bool(info):  # one synchronisation per forward, on an accelerator
        raise ValueError(
            "solver='accelerated': the competitor M is singular, so M y = b has no "
            "unique solution; use solver='gradient'"
        )
    solve = make_product(inverse.to(b.dtype), spatial)
    y = torch.empty_like(b)
    solve(torch.zeros((), dtype=b.dtype, device=b.device), b, y)
    if on_iteration is not None and on_iteration(0, y):
        return y, 0
    if tol <= 0 or max_iterations == 1:
        return y, 0
    apply_m = make_product(competitor.to(b.dtype), spatial)
    neg_b = torch.neg(b)
    error = torch.empty_like(b)
    correction = torch.empty_like(b)
    for i in range(1, max_iterations):
        apply_m(neg_b, y, error)  # M y - b
        if _small(error.norm() * lr, y.norm(), tol):
            return y, i - 1
        solve(y, error.neg_(), correction)  # y + M^{-1} (b - M y)
        y, correction = correction, y
        if on_iteration is not None and on_iteration(i, y):
            return y, i
    return y, max_iterations - 1


def heavy_ball_constants(competitor: torch.Tensor) -> tuple[float, float]:
    """Step `a` and momentum `beta` for `M`'s symmetric part (see the module doc)."""
    matrix = competitor.detach().to(torch.float64)
    eigenvalues = torch.linalg.eigvalsh((matrix + matrix.T) / 2)
    mu, big = (float(v) for v in eigenvalues[[0, -1]])
    if not (math.isfinite(mu) and math.isfinite(big)) or big <= 0:
        raise ValueError(
            "solver='accelerated' needs a competitor M with a positive eigenvalue "
            f"and finite entries; its symmetric part has eigenvalues in [{mu}, {big}]"
        )
    if mu <= 0:  # not convex: no momentum, the largest safe step
        return 1.0 / big, 0.0
    root_big, root_mu = math.sqrt(big), math.sqrt(mu)
    step = 4.0 / (root_big + root_mu) ** 2
    beta = ((root_big - root_mu) / (root_big + root_mu)) ** 2
    return step, beta


def solve_projected(
    b: torch.Tensor,
    competitor: torch.Tensor,
    lr: float,
    max_iterations: int,
    project_: Callable[[torch.Tensor], None],
    tol: float = 0.0,
    on_iteration: IterationCallback | None = None,
    chunk_rows: int | None = None,
    constants: tuple[float, float] | None = None,
) -> tuple[torch.Tensor, int]:
    """Projected heavy-ball steps from `y = 0` (see the module docstring).

    Args:
        b: the drive, rows `[B, C]` or channels-first `[B, C, S]`.
        competitor: `M`, `[C, C]`.
        lr: the plain step's learning rate (only in the residual of `tol`).
        max_iterations: cap on the number of steps.
        project_: the projection, in place, on a buffer shaped like (a block of) `b`.
        tol: relative fixed-point residual to reach; `0`: exactly `max_iterations`.
        on_iteration: optional callback after every step (then no blocks).
        chunk_rows: run blocks of this many samples at a time, each to its own
            residual (the projection must act on samples independently).
        constants: `(a, beta)`; by default `heavy_ball_constants(competitor)`.

    Returns:
        `(y, last_idx)`: `y` shaped like `b`, and the largest index of the last step
        run over the blocks (-1 when `max_iterations == 0`).
    """
    if max_iterations <= 0:
        return torch.zeros_like(b), -1
    step, beta = (
        constants if constants is not None else heavy_ball_constants(competitor)
    )
    spatial = b.ndim > 2
    size = competitor.shape[0]
    weight = competitor.to(b.dtype)
    eye = torch.eye(size, dtype=b.dtype, device=b.device)
    momentum_update = make_product(eye * (1 + beta) - step * weight, spatial)
    plain_update = make_product(eye - lr * weight, spatial)
    solver = _HeavyBall(
        step, beta, lr, momentum_update, plain_update, project_, tol, max_iterations
    )
    if chunk_rows is None or chunk_rows >= b.shape[0] or on_iteration is not None:
        return solver.run(b, on_iteration)
    result = torch.empty_like(b)
    last_idx = -1
    for start in range(0, b.shape[0], chunk_rows):
        block, idx = solver.run(b[start : start + chunk_rows])
        result[start : start + chunk_rows] = block
        last_idx = max(last_idx, idx)
    return result, last_idx


class _HeavyBall:
    """The loop of `solve_projected` on one block of samples."""

    def __init__(
        self, step, beta, lr, momentum_update, plain_update, project_, tol, iterations
    ):
        self.step, self.beta, self.lr = step, beta, lr
        self.momentum_update, self.plain_update = momentum_update, plain_update
        self.project_, self.tol, self.iterations = project_, tol, iterations

    def run(
        self, b: torch.Tensor, on_iteration: IterationCallback | None = None
    ) -> tuple[torch.Tensor, int]:
        step, beta, project_ = self.step, self.beta, self.project_
        drive = b * step
        plain_drive = b * self.lr if self.tol > 0 else None
        # step 0 from y = y_{-1} = 0
        y = drive.clone()
        project_(y)
        if on_iteration is not None and on_iteration(0, y):
            return y, 0
        previous = torch.zeros_like(b)
        scratch = torch.empty_like(b) if self.tol > 0 else None
        last_residual = math.inf
        for i in range(1, self.iterations):
            # previous <- a b - beta y_{k-1}, then P(previous + B y_k): y_{k+1}
            torch.add(drive, previous, alpha=-beta, out=previous)
            self.momentum_update(previous, y, previous)
            project_(previous)
            y, previous = previous, y
            if on_iteration is not None and on_iteration(i, y):
                return y, i
            if scratch is not None and i % CHECK_EVERY == 0:
                self.plain_update(plain_drive, y, scratch)  # T(y)
                project_(scratch)
                # one synchronisation for both norms
                norms = torch.stack([scratch.sub_(y).norm(), y.norm()])
                residual, norm = norms.tolist()
                if residual <= self.tol * norm:
                    return y, i
                if residual > last_residual:  # restart: drop the momentum
                    previous.copy_(y)
                last_residual = residual
        return y, self.iterations - 1


def _small(residual: torch.Tensor, norm: torch.Tensor, tol: float) -> bool:
    """`residual <= tol * norm` (one synchronisation)."""
    return bool(residual <= tol * norm)
