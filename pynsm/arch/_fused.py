"""The fused fast path of the similarity-matching iteration.

With plain SGD (step `lr`) on `y` and no scheduler, the iteration of
`MultiSimilarityMatching` is

    y <- P(y - lr * (M y - b)),    b = sum_k W_k x_k,    y_0 = 0,

with `M` acting on the channel dimension. Rewritten as

    y <- P(lr * b + A y),          A = I - lr * M,

it is one matrix product per iteration, written into a preallocated buffer and
followed by an in-place projection: no autograd, no optimizer, no per-iteration
allocation. Two layouts are used:

* dense outputs `[B, C]` are rows: `y <- P(lr * b + y @ A^T)` (`addmm`);
* spatial outputs `[B, C, S]` (`S` positions) stay channels-first, and every sample
  is a `[C, C] x [C, S]` product (`baddbmm` with `A` broadcast over the batch), so
  that neither `b` nor `y` needs a transposed copy.

There is one loop, `_iterate`; the convergence test (`_Convergence`), the per-iteration
callback and the cache blocking (`_run_in_blocks`) are options around it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# called after every iteration with (iteration index, current y); truthy stops
IterationCallback = Callable[[int, torch.Tensor], bool]
# update(drive, y, out): out <- drive + (A applied to y), for any leading block
Update = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]


def make_update(competitor: torch.Tensor, lr: float, spatial: bool) -> Update:
    """Return the linear part of one iteration, `out <- drive + A y`, `A = I - lr M`.

    Args:
        competitor: `M`, `[C, C]`.
        lr: the iteration's learning rate.
        spatial: `y` is `[B, C, S]` (channels first) rather than rows `[B, C]`.
    """
    size = competitor.shape[0]
    eye = torch.eye(size, dtype=competitor.dtype, device=competitor.device)
    return make_product(eye.sub_(competitor, alpha=lr), spatial)


def make_product(matrix: torch.Tensor, spatial: bool) -> Update:
    """Return `out <- drive + matrix y`, `matrix` `[C, C]` acting on the channels.

    `drive` may be `out` itself (BLAS accumulates into it) or anything that
    broadcasts to `y`'s shape.

    Args:
        matrix: `[C, C]`.
        spatial: `y` is `[B, C, S]` (channels first) rather than rows `[B, C]`.
    """
    size = matrix.shape[0]
    if not spatial:
        matrix_t = matrix.t()

        def product_rows(drive, y, out):
            torch.addmm(drive, y, matrix_t, out=out)

        return product_rows

    def product_spatial(drive, y, out):
        torch.baddbmm(drive, matrix.expand(y.shape[0], size, size), y, out=out)

    return product_spatial


def run_fused_iteration(
    drive: torch.Tensor,
    update: Update,
    max_iterations: int,
    project_: Callable[[torch.Tensor], None],
    tol: float = 0.0,
    check_every: int = 1,
    on_iteration: IterationCallback | None = None,
    chunk_rows: int | None = None,
) -> tuple[torch.Tensor, int]:
    """Run the fused iteration from `y = 0`.

    Args:
        drive: `lr * b`, rows `[B, C]` or channels-first `[B, C, S]`.
        update: `out <- drive + A y` for a block of samples, see `make_update`.
        max_iterations: maximum number of iterations.
        project_: applies the projection in place to a buffer shaped like `drive`.
        tol: stop after the first iteration `i >= 1` whose update changed every
            element by less than `tol` (disabled when `tol <= 0`; an empty `y`
            has converged at `i = 1`).
        check_every: look at the convergence flag only every this many iterations.
            The flag itself is updated every iteration on the device, `y` is frozen
            once it is set and the iteration index at which it was set is recorded,
            so the answer does not depend on `check_every`; larger values only
            avoid host-device synchronisation. Must be 1 with `on_iteration`.
        on_iteration: optional callback, see `IterationCallback`.
        chunk_rows: if given, and neither `tol` nor `on_iteration` is used, run all
            iterations on blocks of this many samples at a time. Samples evolve
            independently (`M` only mixes channels), so the answer is the same, but
            a block stays in cache for all iterations instead of streaming the
            whole `y` through memory every iteration. `project_` must then act on
            samples independently (element-wise projections do).

    Returns:
        `(y, last_idx)`: the final `y`, shaped like `drive`, and the index of the last
        iteration that counted (-1 when `max_iterations == 0`).
    """
    if max_iterations <= 0:
        return torch.zeros_like(drive), -1
    if on_iteration is not None and check_every != 1:
        raise ValueError("check_every must be 1 when an iteration callback is used")

    if (
        chunk_rows is not None
        and chunk_rows < drive.shape[0]
        and tol <= 0
        and on_iteration is None
    ):
        return _run_in_blocks(drive, update, max_iterations, project_, chunk_rows)

    convergence = _Convergence(tol, check_every, drive) if tol > 0 else None
    return _iterate(
        drive,
        update,
        max_iterations,
        project_,
        y=torch.empty_like(drive),
        spare=torch.empty_like(drive),
        convergence=convergence,
        on_iteration=on_iteration,
    )


def _iterate(
    drive: torch.Tensor,
    update: Update,
    max_iterations: int,
    project_: Callable[[torch.Tensor], None],
    y: torch.Tensor,
    spare: torch.Tensor,
    convergence: _Convergence | None = None,
    on_iteration: IterationCallback | None = None,
) -> tuple[torch.Tensor, int]:
    """The loop: `y <- P(drive + A y)` in the buffers `y` and `spare`, in turn.

    Returns the buffer holding the final `y` (`y` or `spare`) and the index of the
    last iteration that counted.
    """
    # iteration 0 starts from y = 0, so it needs no product
    y.copy_(drive)
    project_(y)
    if on_iteration is not None and on_iteration(0, y):
        return y, 0
    y_next = spare
    for i in range(1, max_iterations):
        update(drive, y, y_next)
        project_(y_next)
        y, y_next = y_next, y  # y_next now holds the previous iterate
        if on_iteration is not None and on_iteration(i, y):
            return y, i
        if convergence is not None and convergence.stop(i, y, y_next):
            return y, convergence.last_idx(i)
    if convergence is not None:
        return y, convergence.last_idx(max_iterations - 1)
    return y, max_iterations - 1


class _Convergence:
    """The optional test of `_iterate`: every element moved by less than `tol`.

    With `check_every == 1` the host looks at the answer after every iteration and
    the loop stops at once. Otherwise the flag and the stopping index stay on the
    device, `y` is frozen once the flag is set (so further iterations change
    nothing), and the host looks only every `check_every` iterations.
    """

    def __init__(self, tol: float, check_every: int, like: torch.Tensor) -> None:
        self.tol = tol
        self.check_every = check_every
        self.diff = torch.empty_like(like)
        self.done = torch.zeros((), dtype=torch.bool, device=like.device)
        self.stop_idx = torch.full((), -1, dtype=torch.long, device=like.device)

    def stop(self, i: int, y: torch.Tensor, y_prev: torch.Tensor) -> bool:
        """Update the test with iteration `i` (`y`, from `y_prev`); true: stop now."""
        if self.check_every == 1:
            return bool(self._moved_less(y, y_prev))
        # once converged, y stays frozen: y <- y_prev where done
        y.copy_(torch.where(self.done, y_prev, y))
        newly_done = self._moved_less(y, y_prev) & ~self.done
        self.stop_idx.masked_fill_(newly_done, i)
        self.done |= newly_done
        return i % self.check_every == 0 and bool(self.done)

    def last_idx(self, i: int) -> int:
        """The index of the last iteration that counted, the loop having run to `i`."""
        if self.check_every == 1:
            return i
        return int(torch.where(self.done, self.stop_idx, i))

    def _moved_less(self, y: torch.Tensor, y_prev: torch.Tensor) -> torch.Tensor:
        if y.numel() == 0:  # nothing moved: converged (amax of nothing is an error)
            return torch.ones((), dtype=torch.bool, device=y.device)
        return torch.sub(y, y_prev, out=self.diff).abs_().amax() < self.tol


def _run_in_blocks(
    drive: torch.Tensor,
    update: Update,
    max_iterations: int,
    project_: Callable[[torch.Tensor], None],
    chunk_rows: int,
) -> tuple[torch.Tensor, int]:
    """All iterations on one block of rows at a time (see `run_fused_iteration`)."""
    result = torch.empty_like(drive)
    spare = torch.empty(
        (chunk_rows, *drive.shape[1:]), dtype=drive.dtype, device=drive.device
    )
    for start in range(0, drive.shape[0], chunk_rows):
        block_drive = drive[start : start + chunk_rows]
        target = result[start : start + chunk_rows]
        y, _ = _iterate(
            block_drive,
            update,
            max_iterations,
            project_,
            y=target,
            spare=spare[: block_drive.shape[0]],
        )
        if y is not target:
            target.copy_(y)
    return result, max_iterations - 1
