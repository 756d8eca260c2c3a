"""The accelerated solve of the similarity-matching fixed point (`"accelerated"`).

The plain iteration `y <- P(y - lr (M y - b))` (see `pynsm.arch._fused`) is gradient
descent on `min_y 1/2 y^T M y - b^T y` (over `y >= 0` when `P` is ReLU). Its error
shrinks by `max(|1 - lr lam_min|, |1 - lr lam_max|)` a step, `lam` the eigenvalues of
`M`: about `(kappa - 1) / (kappa + 1)` at best, `kappa = lam_max / lam_min`. This
module reaches the same fixed point in fewer steps:

* **no projection** -- the fixed point solves the linear system `M y = b` (whatever
  `lr > 0`). `M` is `C x C` with `C` = out_channels, a few hundred at most, and acts
  on the channel dimension only, so one factorisation (in float64) gives
  `y = M^{-1} b` for every sample and position at once: one matrix product the size
  of one plain step. When `tol > 0` the residual is checked once and, should
  rounding leave it above `tol` (a nearly singular `M` in float32), each further
  iteration is a step of iterative refinement, `y <- y + M^{-1} (b - M y)`. A
  singular `M` (no unique fixed point) is a `ValueError`.
* **a projection** (ReLU: a non-negative quadratic program; any projection on a
  convex set) -- projected heavy-ball (Polyak) steps with the optimal constants for
  a spectrum `[mu, L]`,

      y_{k+1} = P(y_k - a (M y_k - b) + beta (y_k - y_{k-1})),
      a = 4 / (sqrt(L) + sqrt(mu))^2,
      beta = ((sqrt(L) - sqrt(mu)) / (sqrt(L) + sqrt(mu)))^2,

  whose error shrinks by `(sqrt(kappa) - 1) / (sqrt(kappa) + 1)` a step near the
  solution (0.5 instead of 0.8 for `kappa = 9`). Rewritten like the plain step it is
  one product per step,

      y_{k+1} = P(a b - beta y_{k-1} + B y_k),   B = (1 + beta) I - a M,

  with the drive `a b - beta y_{k-1}` written into `y_{k-1}`'s buffer and the
  product accumulated into it in place: no allocation per step, the cost of a plain
  step (measured within 7% on the conv case's cache blocks). It has the
  same fixed points as the plain iteration (those of `P(y - t (M y - b)) = y` do not
  depend on `t > 0`). `[mu, L]` starts as the spectrum of `M`'s symmetric part.
  Under ReLU, once the active set settles each sample's problem is linear on its
  free coordinates (`y > 0`), whose matrix is a principal submatrix of `M`: its
  eigenvalues lie inside `[mu, L]` but are usually much further from 0, and with
  `M`'s own `mu` the momentum is too large (measured: no faster than plain steps).
  So after `ADAPT_AT` steps `mu` is raised to a Lanczos estimate of the smallest
  free-set eigenvalue of the 16 samples furthest from their fixed point (an
  estimate from above: a `mu` too large slows the slowest modes, it never makes the
  iteration diverge; `L` stays `M`'s). Safeguard: when the residual grew since it
  was last looked at, the momentum is dropped (`y_{k-1} <- y_k`, a restart). An
  indefinite `M` (`mu <= 0`: no convex problem) gets `beta = 0`, `a = 1 / L`.
  Measured against projected Nesterov/FISTA with restart, Anderson mixing,
  Barzilai-Borwein steps and an active-set finish (conjugate gradients on the free
  coordinates; docs/benchmarks.md): the fewest products for a given accuracy.
  Why the ReLU cases gain less than the linear ones: the plain step is itself
  faster there (it only has to converge on the free coordinates, whose spectrum
  is narrower), and any method built on products with `M` is bounded by the
  free-set condition number (about 4 on the dense condition-9 case, 2 on the conv
  demo): at the optimal rate about half the plain steps. An exact solve per sample
  on its free set would not be, but batched small factorisations on the CPU cost
  more than the whole plain loop (measured: 6.7 ms for 512 Cholesky factorisations
  of 50 x 50 against 6 ms for the 26 plain steps of the dense condition-9 case).

**Tolerance.** `tol` is the relative fixed-point residual of the plain step,
`||y - T(y)|| <= tol ||y||` with `T(y) = P(y - lr (M y - b))` (what
`pynsm.train.fixed_point_residual` reports). A look at it takes the step in its
first form, from `g = M y_k - b`, which gives `T(y_k) - y_k = P(y_k - lr g) - y_k`
(under ReLU `-min(lr g, y_k)`) without a further product: a look costs a few passes
over `y` and, on an accelerator, one host-device synchronisation. The heavy-ball
loop looks after `CHECK_EVERY` steps (`ADAPT_AT` under ReLU), then after as many
steps as the rate observed so far says it needs (at least 1 on the CPU,
`CHECK_EVERY` on an accelerator; at most four times that). `tol = 0` runs exactly
`max_iterations` steps. On the CPU with cache blocks, every block of samples stops
on its own residual (all blocks below `tol` implies the whole batch is), and the
blocks after the first look first where the first one stopped.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ._fused import IterationCallback, make_product

#: on an accelerator, steps between two looks at the residual (a synchronisation)
CHECK_EVERY = 4
#: heavy-ball steps before `mu` is adapted to the free sets (ReLU; the residual is
#: first looked at then; measured: 2 takes 1-2 fewer steps than 4 on the dense cases)
ADAPT_AT = 2


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
    return _heavy_ball(*_spectrum(competitor))


def _heavy_ball(mu: float, big: float) -> tuple[float, float]:
    if mu <= 0:  # not convex: no momentum, the largest safe step
        return 1.0 / big, 0.0
    return _constants(mu, big)


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
    nonnegative: bool = False,
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
        constants: `(a, beta)`; by default `heavy_ball_constants(competitor)`,
            adapted to the free sets when `nonnegative`.
        nonnegative: `P` is ReLU: after `ADAPT_AT` steps, `mu` is raised to
            the smallest eigenvalue of `M` on the free coordinates (see the
            module docstring).

    Returns:
        `(y, last_idx)`: `y` shaped like `b`, and the largest index of the last step
        run over the blocks (-1 when `max_iterations == 0`).
    """
    if max_iterations <= 0:
        return torch.zeros_like(b), -1
    solver = _HeavyBall(
        competitor, b, lr, project_, tol, max_iterations, constants, nonnegative
    )
    if chunk_rows is None or chunk_rows >= b.shape[0] or on_iteration is not None:
        return solver.run(b, on_iteration)
    solver.blocks = True
    result = torch.empty_like(b)
    last_idx = -1
    for start in range(0, b.shape[0], chunk_rows):
        block, idx = solver.run(b[start : start + chunk_rows])
        result[start : start + chunk_rows] = block
        last_idx = max(last_idx, idx)
    return result, last_idx


class _HeavyBall:
    """The loop of `solve_projected`, run on one block of samples after another.

    Every step costs one product, `g = M y_k - b`, which gives both the step,
    `y_{k+1} = P(y_k + beta (y_k - y_{k-1}) - a g)`, and the fixed-point residual
    of `y_k`, `T(y_k) - y_k = P(y_k - lr g) - y_k` (for ReLU `-min(lr g, y_k)`):
    looking at the residual costs a few passes over `y`, no product. On the CPU it
    is looked at every step; on an accelerator every `CHECK_EVERY` steps (one
    host-device synchronisation each).

    The constants, once adapted to the free sets (on the first block), stay
    adapted for the blocks after it.
    """

    def __init__(
        self, competitor, like, lr, project_, tol, iterations, constants, nonnegative
    ):
        self.weight = competitor.to(like.dtype)
        matrix = competitor.detach().to(torch.float64)
        self.symmetric = (matrix + matrix.T) / 2
        self.spatial = like.ndim > 2
        self.lr, self.project_ = lr, project_
        self.tol, self.iterations = tol, iterations
        self.nonnegative = nonnegative
        self.check_every = 1 if like.device.type == "cpu" else CHECK_EVERY
        self.gradient = _product(self.weight, self.spatial, -1.0)
        self.blocks, self.kept = False, None
        self.mu, self.big = _spectrum(matrix)
        if constants is None:
            constants = _heavy_ball(self.mu, self.big)
            self.adapt = nonnegative and constants[1] > 0
        else:
            self.adapt = False
        self.first_check = ADAPT_AT if self.adapt else CHECK_EVERY
        self._set_constants(*constants)

    def _set_constants(self, step: float, beta: float) -> None:
        self.step, self.beta = step, beta
        eye = torch.eye(
            len(self.weight), dtype=self.weight.dtype, device=self.weight.device
        )
        self.momentum_update = _product(
            eye * (1 + beta) - step * self.weight, self.spatial, 1.0
        )

    def run(
        self, b: torch.Tensor, on_iteration: IterationCallback | None = None
    ) -> tuple[torch.Tensor, int]:
        project_ = self.project_
        checks = self.tol > 0 or self.adapt
        y, previous, drive, gradient = self._buffers(b, checks)
        torch.mul(b, self.step, out=drive)
        # step 0 from y = y_{-1} = 0
        y.copy_(drive)
        project_(y)
        if on_iteration is not None and on_iteration(0, y):
            return y, 0
        previous.zero_()
        last_residual, last_check, next_check = math.inf, 0, self.first_check
        for i in range(1, self.iterations):
            if not checks or i < next_check:
                # previous <- P(a b - beta y_{i-2} + B y_{i-1}): y_i
                torch.add(drive, previous, alpha=-self.beta, out=previous)
                self.momentum_update(previous, y, previous)
                project_(previous)
                y, previous = previous, y
                if on_iteration is not None and on_iteration(i, y):
                    return y, i
                continue
            # a look at the residual of y_{i-1}: the same step, from g = M y - b
            self.gradient(b, y, gradient)
            torch.lerp(previous, y, 1 + self.beta, out=previous)
            previous.add_(gradient, alpha=-self.step)
            project_(previous)
            change = self._fixed_point_change(y, gradient)  # +-(T(y) - y)
            restart = False
            if self.adapt and i >= ADAPT_AT:
                self._adapt_to_free_sets(y, change)
                torch.mul(b, self.step, out=drive)
                restart = True  # new constants: start the momentum afresh
            if self.tol > 0:
                # one synchronisation for both norms
                flat_y, flat_change = y.view(-1), change.view(-1)
                norms = torch.stack(
                    [torch.dot(flat_change, flat_change), torch.dot(flat_y, flat_y)]
                )
                residual, norm = (math.sqrt(v) for v in norms.tolist())
                if residual <= self.tol * norm:
                    # the blocks after this one first look where this one stopped
                    self.first_check = i
                    return y, i - 1
                # restart (drop the momentum) when the residual grew
                restart = restart or residual > last_residual
                next_check = i + self._steps_to_tol(
                    residual, last_residual, i - last_check, norm
                )
                last_residual, last_check = residual, i
            else:
                checks = False
            y, previous = previous, y
            if restart:
                previous.copy_(y)
            if on_iteration is not None and on_iteration(i, y):
                return y, i
        return y, self.iterations - 1

    def _fixed_point_change(
        self, y: torch.Tensor, gradient: torch.Tensor
    ) -> torch.Tensor:
        """`T(y) - y` (its negative under ReLU: `min(lr g, y)`) from `g = M y - b`,
        written over `gradient`."""
        if self.nonnegative:
            if self.lr != 1:
                gradient.mul_(self.lr)
            return torch.minimum(gradient, y, out=gradient)
        gradient.mul_(-self.lr).add_(y)
        self.project_(gradient)
        return gradient.sub_(y)

    def _buffers(self, b: torch.Tensor, checks: bool) -> tuple:
        """Buffers shaped like `b`: `y`, `y_{k-1}`, `a b` and (with checks) `g`;
        fresh for a whole batch (the answer is one of them), reused from block to
        block."""
        count = 4 if checks else 3
        if not self.blocks:
            return (*(torch.empty_like(b) for _ in range(count)), None)[:4]
        if self.kept is None:
            self.kept = tuple(torch.empty_like(b) for _ in range(count))
        return (*(buffer[: len(b)] for buffer in self.kept), None)[:4]

    def _steps_to_tol(
        self, residual: float, last_residual: float, steps: int, norm: float
    ) -> int:
        """When to look again: the steps the residual needs to reach `tol` at the
        rate it fell since the last look (the theoretical one, `sqrt(beta)`, at the
        first), between 1 and `self.check_every` times 4; at least
        `self.check_every` (on an accelerator, a look is a synchronisation)."""
        if math.isfinite(last_residual):
            rate = (residual / last_residual) ** (1 / steps) if last_residual else 1.0
        else:
            rate = math.sqrt(self.beta) if self.beta > 0 else 1.0
        if not 0 < rate < 1:
            return self.check_every
        needed = math.log(self.tol * norm / residual) / math.log(rate)
        return min(max(math.ceil(needed), self.check_every), 4 * self.check_every)

    def _adapt_to_free_sets(self, y: torch.Tensor, change: torch.Tensor) -> None:
        """Raise `mu` to the smallest eigenvalue of `M` on the free coordinates
        (`y > 0`) of the samples furthest from their fixed point (Lanczos)."""
        self.adapt = False
        # per sample (and position)
        distance = torch.linalg.vector_norm(change, dim=1).flatten()
        worst = distance.topk(min(_ADAPT_COLUMNS, len(distance))).indices
        if self.spatial:  # y[sample, :, position] for the worst columns
            positions = y.shape[2]
            columns = y[worst // positions, :, worst % positions]
        else:
            columns = y[worst]
        free = columns > 0
        low = _restricted_lambda_min(self.symmetric, free)
        if math.isfinite(low) and self.mu < low < self.big:
            self._set_constants(*_constants(low, self.big))


#: Lanczos steps and number of samples of the free-set estimate of `mu`
_LANCZOS_STEPS = 8
_ADAPT_COLUMNS = 16


def _spectrum(competitor: torch.Tensor) -> tuple[float, float]:
    """Smallest and largest eigenvalue of `M`'s symmetric part (a clear error when
    there is no positive one)."""
    matrix = competitor.detach().to(torch.float64)
    eigenvalues = torch.linalg.eigvalsh((matrix + matrix.T) / 2)
    mu, big = (float(v) for v in eigenvalues[[0, -1]])
    if not (math.isfinite(mu) and math.isfinite(big)) or big <= 0:
        raise ValueError(
            "solver='accelerated' needs a competitor M with a positive eigenvalue "
            f"and finite entries; its symmetric part has eigenvalues in [{mu}, {big}]"
        )
    return mu, big


def _constants(mu: float, big: float) -> tuple[float, float]:
    """Heavy-ball step and momentum for the spectrum `[mu, big]`, `mu > 0`."""
    root_big, root_mu = math.sqrt(big), math.sqrt(mu)
    step = 4.0 / (root_big + root_mu) ** 2
    beta = ((root_big - root_mu) / (root_big + root_mu)) ** 2
    return step, beta


def _restricted_lambda_min(weight: torch.Tensor, free: torch.Tensor) -> float:
    """The smallest, over columns, Lanczos estimate of the smallest eigenvalue of
    `M` restricted to a column's free coordinates (`free`, `[S, C]` bool).

    Lanczos estimates it from above, so `mu` is never set below the true value
    of the sampled columns; a larger `mu` than some other column's only slows
    that column (it never makes the iteration diverge). Columns with fewer free
    coordinates than Lanczos steps are left out (their Krylov space would run out);
    a breakdown (`M y` inside the space already built) gives a Ritz value 0,
    hence no adaptation.
    """
    steps = min(_LANCZOS_STEPS, weight.shape[0])
    counts = free.sum(1)
    mask = free[counts >= steps].to(weight.dtype)
    if len(mask) == 0:
        return math.inf
    v = mask / mask.sum(1, keepdim=True).sqrt()
    v_prev = torch.zeros_like(v)
    beta = torch.zeros(len(mask), 1, dtype=weight.dtype, device=weight.device)
    alphas, betas = [], []
    for _ in range(steps):
        w = torch.mm(v, weight).mul_(mask)  # M symmetric
        alpha = (w * v).sum(1, keepdim=True)
        w.addcmul_(alpha, v, value=-1).addcmul_(beta, v_prev, value=-1)
        beta = torch.linalg.vector_norm(w, dim=1, keepdim=True)
        alphas.append(alpha)
        betas.append(beta)
        v_prev, v = v, w.div_(beta.clamp_min(1e-300))
    tridiagonal = torch.diag_embed(torch.cat(alphas, 1))
    off = torch.diag_embed(torch.cat(betas[:-1], 1), offset=1)
    ritz = torch.linalg.eigvalsh(tridiagonal + off + off.transpose(1, 2))
    return float(ritz[:, 0].min())


def _product(
    matrix: torch.Tensor, spatial: bool, scale: float
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]:
    """Return `f(drive, y, out)`: `out <- scale * drive + matrix y`, `matrix`
    acting on the channels (`drive` may be `out`: BLAS scales it in place)."""
    size = matrix.shape[0]
    if not spatial:
        matrix_t = matrix.t()

        def rows(drive, y, out):
            torch.addmm(drive, y, matrix_t, beta=scale, out=out)

        return rows

    def channels_first(drive, y, out):
        expanded = matrix.expand(y.shape[0], size, size)
        torch.baddbmm(drive, expanded, y, beta=scale, out=out)

    return channels_first


def _small(residual: torch.Tensor, norm: torch.Tensor, tol: float) -> bool:
    """`residual <= tol * norm` (one synchronisation)."""
    return bool(residual <= tol * norm)
