"""Similarity-matching circuits.

A circuit encodes its inputs, `b = sum_k W_k x_k` (shape `[B, M, *spatial]`, with
`M = out_channels`), and finds its output by the inner iteration

    y <- P(y - lr * (M y - b)),   y_0 = 0,

where `M` is the lateral `competitor` weight acting on the channel dimension and `P`
the `iteration_projection` (e.g. ReLU for non-negative similarity matching). The
weights are then trained on `loss(*inputs, y)`,

    [2 sum(y^T M y) - 4 sum(y^T b)] / numel(y) - |M|_F^2 / M + R,

where the gradient of `M` is multiplied by `-1/tau` (a hook on `competitor.weight`),
so that one ordinary optimizer descends in `W` while ascending in `M`. `R` is the
encoder regularization: `"weight"` adds `(2/M) |theta|^2` for every trainable encoder
parameter, `"whiten"` adds `2 mean((W_k x_k)^2)`, `"none"` nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from numbers import Real
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..validation import check_bool, check_choice, check_float, check_int
from ._accelerated import solve_linear, solve_projected
from ._fused import make_update, run_fused_iteration
from .base import IterationLossModule, set_state

_REGULARIZATIONS = ("weight", "whiten", "none")
_SOLVERS = ("gradient", "accelerated")
# `module.y` outside forward: empty (shared, never written to)
_NO_ITERATE = torch.empty(0)
# projections that act element-wise and equal ReLU: the fused iteration applies them
# in place
_RELU_PROJECTIONS = (torch.relu, torch.relu_, F.relu, F.relu_)
# plain SGD settings under which the fused iteration equals `torch.optim.SGD`
_PLAIN_SGD = {
    "momentum": 0,
    "dampening": 0,
    "weight_decay": 0,
    "nesterov": False,
    "maximize": False,
    "foreach": None,
    "fused": None,
    "differentiable": False,
}
# on an accelerator, look at the convergence flag only every few iterations
_CHECK_EVERY_ON_ACCELERATOR = 4
# single-threaded on the CPU, iterate blocks of about this many elements at a time so
# that they stay in cache (512 kB per float32 buffer). Measured on 2 cores: 30% faster
# with one thread; with two, the per-block synchronisation of the threads costs more
# than the cache saves (the large L3 holds the whole batch), so it is not used there.
_CPU_BLOCK_ELEMENTS = 2**17


class _ScaleGradient:
    """Gradient hook multiplying by a constant (a class, so that it pickles)."""

    def __init__(self, factor: float) -> None:
        self.factor = factor

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        return grad * self.factor


class MultiSimilarityMatching(IterationLossModule):
    """Multiple-input similarity-matching circuit.

    Inputs may be skipped in `forward()` and `loss()` by passing `None` or by passing
    fewer inputs than there are encoders. Every encoder output must have shape
    `[B, out_channels, *spatial]`; an output of shape `[B, out_channels]` is broadcast
    over the spatial dimensions of the others. An empty batch (`B = 0`) gives an
    empty output.

    **Two strategies, one answer.** `forward` runs the lifecycle of
    `IterationModule.forward`. With plain SGD on `y` (the default: a number as
    learning rate, no momentum, no weight decay) and no scheduler, it takes the
    *fused* strategy: one in-place matrix product per iteration, no optimizer and no
    autograd. With another optimizer or a scheduler, or when one of the methods in
    `fused_replaces` is replaced -- in a subclass or on the instance, e.g.
    `circuit.converged = my_test` -- it takes the general `IterationLossModule`
    strategy, so that the replacement runs. Both give the same answer where both
    apply; `uses_fused_iteration()` tells which one a call would take.

    **What hooks see**, on both strategies: in `"iteration"` hooks, `module.y` is the
    current iterate `[B, M, *spatial]` (read it, clone it to keep it: its memory is
    reused) and `module.iteration_loss()` its iteration loss; in `"post"` hooks,
    `module.y` holds the output and `module.iteration_idx` the index of the last
    iteration run.

    Args:
        encoders: modules encoding the inputs, `W_k x_k`.
        out_channels: number of output channels `M` (an integer >= 1).
        tau: the competitor learns `1/tau` times faster than the encoders (> 0).
        tol: with `solver="gradient"`, the iteration stops after the first
            iteration (from the second on) in which every element of `y` changed
            by less than `tol`; with `"accelerated"`, once the relative fixed-point
            residual `||y - T(y)|| / ||y||` (`T` one plain step) is at most `tol`
            (in float32 it cannot go much below 1e-7: a smaller `tol` runs to
            `max_iterations`). `0` disables it.
        max_iterations: maximum number of iterations in `forward()` (>= 0).
        solver: how the fused strategy finds `y`. `"gradient"` (the default):
            the plain steps above, exactly pynsm 1.0.1's. `"accelerated"`: the
            same fixed point in fewer steps (see `pynsm.arch._accelerated`) -- a
            direct solve of `M y = b` without projection, projected heavy-ball
            steps with restart under one (a projection onto a convex set, e.g.
            ReLU). It needs plain SGD and no scheduler (a `ValueError`
            otherwise); `"iteration"` hooks are called after every step with
            `module.y` the current iterate; a method of `fused_replaces` replaced
            on the instance or in a subclass takes the general strategy, i.e. the
            plain steps of the optimizer, as with `"gradient"`.
        regularization: `"weight"`, `"whiten"` or `"none"`, or one per encoder.
        **kwargs: passed to `IterationLossModule` (`iteration_projection`,
            `iteration_lr`, `iteration_optimizer`, ...).

    Example:
        >>> import torch
        >>> circuit = MultiSimilarityMatching(
        ...     [torch.nn.Linear(5, 3), torch.nn.Linear(4, 3)], out_channels=3,
        ...     iteration_projection=torch.relu)
        >>> x1, x2 = torch.randn(8, 5), torch.randn(8, 4)
        >>> y = circuit(x1, x2)
        >>> y.shape
        torch.Size([8, 3])
        >>> circuit(None, x2).shape  # the first input skipped
        torch.Size([8, 3])
        >>> circuit.loss(x1, x2, y).backward()
        >>> circuit.uses_fused_iteration()
        True
        >>> circuit.converged = lambda *inputs: circuit.iteration_idx == 4
        >>> circuit.uses_fused_iteration(), circuit(x1, x2).shape, circuit.iteration_idx
        (False, torch.Size([8, 3]), 4)
    """

    # the fused iteration computes all of these at once (see `IterationModule`)
    fused_replaces = (
        "pre_iteration",
        "iteration",
        "iteration_set_gradients",
        "iteration_parameters",
        "converged",
        "post_iteration",
    )

    def __init__(
        self,
        encoders: Sequence[nn.Module],
        out_channels: int,
        tau: float = 0.1,
        tol: float = 0.0,
        max_iterations: int = 40,
        regularization: str | Sequence[str] = "weight",
        solver: str = "gradient",
        **kwargs: Any,
    ) -> None:
        super().__init__(max_iterations=max_iterations, **kwargs)
        if isinstance(encoders, nn.Module) and not isinstance(encoders, nn.ModuleList):
            raise TypeError(
                "encoders must be a sequence of nn.Module (e.g. [encoder]), got a "
                f"single {type(encoders).__name__}"
            )
        try:
            encoders = list(encoders)
        except TypeError:
            raise TypeError(
                "encoders must be a sequence of nn.Module, got "
                f"{type(encoders).__name__}"
            ) from None
        if not encoders or not all(isinstance(e, nn.Module) for e in encoders):
            raise TypeError("encoders must be a non-empty sequence of nn.Module")
        out_channels = check_int("out_channels", out_channels, minimum=1)
        tau = check_float("tau", tau, minimum=0, strict=True)
        tol = check_float("tol", tol, minimum=0)
        solver = check_choice("solver", solver, _SOLVERS)

        if isinstance(regularization, str):
            regularization = [regularization] * len(encoders)
        elif not isinstance(regularization, Sequence):
            raise TypeError(
                "regularization must be a string or a sequence of strings, got "
                f"{type(regularization).__name__}"
            )
        regularization = list(regularization)
        if len(regularization) != len(encoders):
            raise ValueError(
                f"regularization has {len(regularization)} entries but there are "
                f"{len(encoders)} encoders"
            )
        for reg in regularization:
            check_choice("regularization", reg, _REGULARIZATIONS)

        self.encoders = nn.ModuleList(encoders)
        self.out_channels = out_channels
        self.tau = tau
        self.tol = tol
        self.solver = solver
        self.regularization = regularization
        if solver == "accelerated" and not self.fused_iteration_supported():
            raise ValueError(
                "solver='accelerated' needs the fused iteration: plain SGD "
                "(iteration_optimizer=torch.optim.SGD with a number as lr and no "
                "momentum or weight decay) and no iteration_scheduler; use "
                "solver='gradient' with other optimizers"
            )

        self.competitor = nn.Linear(out_channels, out_channels, bias=False)
        nn.init.eye_(self.competitor.weight)
        self._install_competitor_hook()

        # state of one forward call, released when it ends: the iterate and `b`
        self.y = _NO_ITERATE
        self._Wx_sum: torch.Tensor | None = None
        # the previous iterate, for the general strategy's convergence test
        self._last_y: torch.Tensor | None = None

    # ----------------------------------------------------------------- set-up
    def _install_competitor_hook(self) -> None:
        """Scale the competitor's gradient by `-1/tau` (ascent, `1/tau` faster)."""
        weight = self.competitor.weight
        hooks = getattr(weight, "_backward_hooks", None) or {}
        if not any(isinstance(h, _ScaleGradient) for h in hooks.values()):
            weight.register_hook(_ScaleGradient(-1.0 / self.tau))

    def __setstate__(self, state: dict[str, Any]) -> None:
        # copy.deepcopy and pickling drop tensor hooks: put the scaling back
        super().__setstate__(state)
        if "competitor" in self._modules:
            self._install_competitor_hook()

    # --------------------------------------------------------------- encoding
    def _encode(self, *inputs: torch.Tensor | None) -> list[torch.Tensor | None]:
        """Encode the inputs that are present, `W_k x_k`: one entry per encoder,
        `None` for the skipped ones. Check the result with `_output_shape`."""
        if len(inputs) > len(self.encoders):
            raise ValueError(
                f"got {len(inputs)} inputs but the circuit has only "
                f"{len(self.encoders)} encoders"
            )
        present = [i for i, x in enumerate(inputs) if x is not None]
        if not present:
            raise ValueError("no input given: pass at least one input that is not None")
        batch_sizes = {
            i: inputs[i].shape[0]
            for i in present
            if isinstance(inputs[i], torch.Tensor) and inputs[i].ndim > 0
        }
        if len(set(batch_sizes.values())) > 1:
            raise ValueError(f"inputs have different batch sizes: {batch_sizes}")

        encodings: list[torch.Tensor | None] = [None] * len(self.encoders)
        for i in present:
            _check_fits_kernel(i, self.encoders[i], inputs[i])
            encodings[i] = self.encoders[i](inputs[i])
        return encodings

    def _output_shape(self, encodings: Sequence[torch.Tensor | None]) -> torch.Size:
        """Check the encodings and return the shape of `y`, `[B, M, *spatial]`."""
        shape: torch.Size | None = None
        batch = None
        for i, enc in enumerate(encodings):
            if enc is None:
                continue
            if not isinstance(enc, torch.Tensor):
                raise TypeError(
                    f"encoder {i} returned {type(enc).__name__}, expected a Tensor"
                )
            if enc.ndim < 2 or enc.shape[1] != self.out_channels:
                raise ValueError(
                    f"encoder {i} output has shape {tuple(enc.shape)}; expected "
                    f"[batch, out_channels={self.out_channels}, *spatial]"
                )
            if batch is not None and enc.shape[0] != batch:
                raise ValueError(
                    f"encoder outputs have different batch sizes: {batch} and "
                    f"{enc.shape[0]} (encoder {i})"
                )
            batch = enc.shape[0]
            if enc.ndim > 2:
                if shape is not None and shape != enc.shape:
                    raise ValueError(
                        f"encoder {i} output has shape {tuple(enc.shape)}, but another "
                        f"encoder gave {tuple(shape)}"
                    )
                shape = enc.shape
        if shape is None:
            shape = next(e.shape for e in encodings if e is not None)
        return shape

    def _iteration_dtype(self, encodings: Sequence[torch.Tensor | None]) -> torch.dtype:
        """The dtype `y` is computed in: encodings and competitor, promoted (so that
        e.g. bfloat16 encodings under autocast iterate in the competitor's float32)."""
        dtype = self.competitor.weight.dtype
        for enc in encodings:
            if enc is not None:
                dtype = torch.promote_types(dtype, enc.dtype)
        return dtype

    def _encode_and_sum(
        self, inputs: tuple[torch.Tensor | None, ...]
    ) -> tuple[torch.Tensor, torch.Size]:
        """`b = sum_k W_k x_k` without autograd, flat (`[B, M]` or `[B, M, S]`), and
        the shape of `y`; the start of both strategies."""
        with torch.no_grad():
            encodings = self._encode(*inputs)
            shape = self._output_shape(encodings)
            dtype = self._iteration_dtype(encodings)
            return _sum_encodings(encodings, shape, dtype), shape

    # ---------------------------------------------------------------- forward
    def forward(self, *inputs: torch.Tensor | None) -> torch.Tensor:
        """Run the iteration and return the output `y`, `[B, M, *spatial]`, detached.

        The lifecycle is that of `IterationModule.forward`; see the class docstring
        for the strategy it takes and what hooks see.

        Args:
            *inputs: one input per encoder (`None` or omitted to skip it).
        """
        return super().forward(*inputs)

    def fused_iteration_supported(self) -> bool:
        """Whether the settings allow the fused iteration: plain SGD with a number
        as learning rate, no scheduler."""
        if self.it_construct_optim is not torch.optim.SGD:
            return False
        if self.it_construct_sched is not None:
            return False
        lr = self.it_optim_kwargs.get("lr")
        if isinstance(lr, bool) or not isinstance(lr, Real):
            return False
        return all(
            key == "lr" or (key in _PLAIN_SGD and value == _PLAIN_SGD[key])
            for key, value in self.it_optim_kwargs.items()
        )

    def fused_iteration(
        self,
        on_iteration: Callable[[int], bool] | None,
        *inputs: torch.Tensor | None,
    ) -> tuple[torch.Tensor, int]:
        """The whole iteration at once, in place (see `pynsm.arch._fused`).

        Args:
            on_iteration: called with the index of every iteration, `self.y` then
                showing that iterate; true stops. `None`: no per-iteration work.
            *inputs: one input per encoder (`None` or omitted to skip it).

        Returns:
            `(y, last_idx)`: the output, detached, and the last iteration's index.
        """
        b, shape = self._encode_and_sum(inputs)
        set_state(self, _Wx_sum=b.view(shape))
        lr = self.it_optim_kwargs["lr"]
        spatial = len(shape) > 2
        on_device = b.device.type != "cpu"
        with torch.no_grad():
            project_, elementwise = self._in_place_projection(shape)

            callback = None
            if on_iteration is not None:

                def callback(idx: int, y_flat: torch.Tensor) -> bool:
                    set_state(self, y=y_flat.view(shape))
                    return on_iteration(idx)

            chunk_rows = None
            if elementwise and not on_device and torch.get_num_threads() == 1:
                per_sample = max(1, math.prod(b.shape[1:]))
                chunk_rows = max(1, _CPU_BLOCK_ELEMENTS // per_sample)
            weight = self.competitor.weight
            if self.solver == "accelerated" and self.iteration_projection is None:
                y_flat, last_idx = solve_linear(
                    b, weight, lr, self.max_iterations, self.tol, callback
                )
            elif self.solver == "accelerated":
                y_flat, last_idx = solve_projected(
                    b,
                    weight,
                    lr,
                    self.max_iterations,
                    project_,
                    tol=self.tol,
                    on_iteration=callback,
                    chunk_rows=chunk_rows,
                    nonnegative=project_ is torch.Tensor.relu_,
                )
            else:
                drive = b if lr == 1 else b * lr
                update = make_update(weight.to(b.dtype), lr, spatial)
                # a host-device synchronisation per iteration is expensive there
                check_every = _CHECK_EVERY_ON_ACCELERATOR if on_device else 1
                y_flat, last_idx = run_fused_iteration(
                    drive,
                    update,
                    self.max_iterations,
                    project_,
                    tol=self.tol,
                    check_every=1 if callback is not None else check_every,
                    on_iteration=callback,
                    chunk_rows=chunk_rows,
                )
        y = y_flat.view(shape)
        set_state(self, y=y)
        return y, last_idx

    def _in_place_projection(
        self, shape: torch.Size
    ) -> tuple[Callable[[torch.Tensor], None], bool]:
        """Return a function projecting the flat `y` buffer in place, and whether it
        acts element-wise (so that it may see any block of samples)."""
        projection = self.iteration_projection
        if projection is None:
            return _no_projection, True
        if projection in _RELU_PROJECTIONS or type(projection) is nn.ReLU:
            return torch.Tensor.relu_, True

        def project_(y_flat: torch.Tensor) -> None:
            # any other projection sees y in the usual [B, M, *spatial] shape
            view = y_flat.view(shape)
            projected = projection(view)
            if projected is not view:
                view.copy_(projected)

        return project_, False

    # ------------------------------------------------ general strategy lifecycle
    def pre_iteration(self, *inputs: torch.Tensor | None) -> None:
        b, shape = self._encode_and_sum(inputs)
        self._Wx_sum = b.view(shape)
        self._last_y = None
        self.y = torch.zeros(shape, dtype=b.dtype, device=b.device)
        super().pre_iteration(*inputs)

    def iteration_set_gradients(self, *inputs: torch.Tensor | None) -> None:
        # the gradient of the iteration loss, computed directly: M y - b
        with torch.no_grad():
            My = _apply_competitor(self.competitor.weight, self.y)
            self.y.grad = My - self._Wx_sum

    def iteration_loss(self, *inputs: torch.Tensor | None) -> torch.Tensor:
        """Loss descended by the iteration: `[2 sum(y^T M y) - 4 sum(y^T b)] / 4`.

        Available during `forward()` (e.g. from an iteration hook); its gradient
        with respect to `y` is `(M + M^T) y / 2 - b`, the update direction when `M`
        is symmetric.
        """
        if self._Wx_sum is None or self.y.shape != self._Wx_sum.shape:
            raise RuntimeError("iteration_loss() is only available during forward()")
        y = self.y
        yMy = (y * _apply_competitor(self.competitor.weight, y)).sum()
        return (2 * yMy - 4 * (y * self._Wx_sum).sum()) / 4

    def converged(self, *inputs: torch.Tensor | None) -> bool:
        if self.tol <= 0:
            return False
        result = False
        if self._last_y is not None:
            # an empty batch has nothing left to move: converged
            change = (self.y.detach() - self._last_y).abs()
            result = change.numel() == 0 or bool(change.max() < self.tol)
        self._last_y = self.y.detach().clone()
        return result

    def post_iteration(self, *inputs: torch.Tensor | None) -> torch.Tensor:
        super().post_iteration(*inputs)
        return self.y.detach()

    def iteration_parameters(self) -> list[torch.Tensor]:
        return [self.y]

    def release_iteration_state(self) -> None:
        """Drop every batch-sized tensor kept during `forward()`."""
        super().release_iteration_state()
        set_state(self, _Wx_sum=None, _last_y=None, y=_NO_ITERATE)

    # ------------------------------------------------------------------- loss
    def loss(self, *args: torch.Tensor | None) -> torch.Tensor:
        """Similarity-matching loss for the weights: `loss(*inputs, y)`.

        Args:
            *args: the inputs as passed to `forward()` (skipped ones `None` or
                omitted), followed by the output `y`, `[B, M, *spatial]`.

        Returns:
            The scalar loss. Regularization counts only encoders whose input is
            present. `competitor.weight`'s gradient arrives multiplied by `-1/tau`.

        Raises:
            ValueError: the inputs do not fit the circuit, `y` does not have the
                shape they give, or the batch is empty (the loss is a mean).
        """
        if len(args) < 2:
            raise ValueError("loss() expects the inputs followed by the output y")
        y = args[-1]
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"y must be a Tensor, got {type(y).__name__}")
        encodings = self._encode(*args[:-1])
        shape = self._output_shape(encodings)
        if y.shape != shape:
            raise ValueError(
                f"y has shape {tuple(y.shape)} but the encoded inputs give "
                f"{tuple(shape)}"
            )
        if y.numel() == 0:
            raise ValueError(
                f"loss() needs at least one sample: y has shape {tuple(y.shape)}"
            )
        channels = y.shape[1]

        # sum_s y_s^T M y_s = <M, sum_s y_s y_s^T>: one Gram matrix over all samples
        # and positions; it is also exactly the gradient with respect to M
        weight = self.competitor.weight
        if y.ndim == 2:
            gram = y.t() @ y
        else:
            y_flat = y.reshape(y.shape[0], channels, -1)
            gram = torch.bmm(y_flat, y_flat.transpose(1, 2)).sum(0)
        yMy = (weight * gram).sum()

        spatial_dims = tuple(range(2, y.ndim))
        y_pooled = y.sum(dim=spatial_dims) if spatial_dims else y
        cross = y.new_zeros(())
        for enc in encodings:
            if enc is None:
                continue
            # a [B, M] encoding broadcast over space only meets the pooled y
            cross = cross + ((y if enc.ndim > 2 else y_pooled) * enc).sum()
        loss = (2 * yMy - 4 * cross) / y.numel() - (weight**2).sum() / channels

        for encoder, reg, enc in zip(self.encoders, self.regularization, encodings):
            if enc is None:
                continue
            if reg == "whiten":
                loss = loss + 2 * (enc**2).mean()
            elif reg == "weight":
                for param in encoder.parameters():
                    if param.requires_grad:
                        loss = loss + (param**2).sum() * (2.0 / channels)
        return loss


class SimilarityMatching(MultiSimilarityMatching):
    """Single-input similarity-matching circuit.

    Args:
        encoder: module encoding the input, `[B, ...] -> [B, M, *spatial]`.
        out_channels: number of output channels `M`.
        **kwargs: passed to `MultiSimilarityMatching`.

    Example:
        >>> import torch
        >>> circuit = SimilarityMatching(
        ...     torch.nn.Conv2d(1, 4, 3), out_channels=4,
        ...     iteration_projection=torch.relu)
        >>> x = torch.randn(2, 1, 8, 8)
        >>> y = circuit(x)
        >>> y.shape
        torch.Size([2, 4, 6, 6])
        >>> loss = circuit.loss(x, y)
        >>> loss.backward()
    """

    def __init__(self, encoder: nn.Module, out_channels: int, **kwargs: Any) -> None:
        super().__init__(encoders=[encoder], out_channels=out_channels, **kwargs)

    @property
    def encoder(self) -> nn.Module:
        """The input encoder."""
        return self.encoders[0]


class SupervisedSimilarityMatching(MultiSimilarityMatching):
    """Supervised similarity-matching circuit for classification.

    The encoders are `[encoder, label_encoder]`, where `label_encoder =
    nn.Linear(num_classes, out_channels, bias=label_bias)` maps floating-point one-hot
    labels to `[B, M]`, broadcast over the encoder's spatial dimensions. Call
    `forward(x, label_onehot)` while training and `forward(x)` at inference; the loss
    is `loss(x, label_onehot, y)` (or `loss(x, y)`). By default the input encoder has
    `"weight"` and the label encoder `"whiten"` regularization.

    Args:
        encoder: module encoding the input, `[B, ...] -> [B, M, *spatial]`.
        num_classes: number of classes (width of the one-hot labels).
        out_channels: number of output channels `M`.
        label_bias: whether the label encoder has a bias.
        **kwargs: passed to `MultiSimilarityMatching`.

    Example:
        >>> import torch
        >>> circuit = SupervisedSimilarityMatching(
        ...     torch.nn.Linear(6, 4), num_classes=3, out_channels=4,
        ...     iteration_projection=torch.relu)
        >>> x = torch.randn(5, 6)
        >>> labels = torch.nn.functional.one_hot(torch.tensor([0, 2, 1, 1, 0]), 3)
        >>> y = circuit(x, labels.float())
        >>> circuit.loss(x, labels.float(), y).backward()
        >>> circuit(x).shape  # inference without labels
        torch.Size([5, 4])
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        out_channels: int,
        label_bias: bool = False,
        **kwargs: Any,
    ) -> None:
        num_classes = check_int("num_classes", num_classes, minimum=1)
        out_channels = check_int("out_channels", out_channels, minimum=1)
        label_bias = check_bool("label_bias", label_bias)
        label_encoder = nn.Linear(num_classes, out_channels, bias=label_bias)
        kwargs.setdefault("regularization", ("weight", "whiten"))
        super().__init__(
            encoders=[encoder, label_encoder], out_channels=out_channels, **kwargs
        )
        self.num_classes = num_classes

    def _encode(
        self, x: torch.Tensor | None, label: torch.Tensor | None = None
    ) -> list[torch.Tensor | None]:
        if label is not None:
            if not isinstance(label, torch.Tensor):
                raise TypeError(f"label must be a Tensor, got {type(label).__name__}")
            if not label.is_floating_point():
                raise TypeError(
                    f"label must be a floating-point one-hot tensor, got {label.dtype}"
                )
            if label.ndim != 2 or label.shape[1] != self.num_classes:
                raise ValueError(
                    f"label has shape {tuple(label.shape)}; expected one-hot "
                    f"[batch, num_classes={self.num_classes}]"
                )
        return super()._encode(x, label)

    def decode_label(self, y: torch.Tensor) -> torch.Tensor:
        """Reconstruct the label input from an output: `L^T M^{-1} mean_s(y)`.

        Similarity matching of the joint input `z = [x; label]` is solved, at the
        optimum of its min-max, by `W = E[y z^T]` and `M = E[y y^T]` (the
        encoders and the competitor), and its output `y = M^{-1} W z` is the
        projection of `z` on its top principal subspace (rows of `M^{-1} W`
        orthonormal). The circuit's own weights then give the best rank-`M`
        reconstruction of its input, `z_hat = W^T M^{-1} y`; its label part is

            label_hat = L^T M^{-1} y,        L = label_encoder.weight  [M, C].

        With `y` inferred from the image alone, `label_hat` is the circuit's
        estimate of the missing label input: reduced-rank regression of the labels
        on the images, learnt by the circuit's local rules. A spatial output is
        averaged over its positions first (the label drive is the same at every
        position). The relation is exact for a linear circuit with `"weight"`
        regularization of both encoders at its optimum; a `"whiten"`-regularized
        label encoder (the default) learns `L = E[y label^T] diag(p)^{-1}` with
        class frequencies `p` instead, which only rescales the classes. The label
        encoder's bias, if any, is not part of the reconstruction.

        Args:
            y: Circuit output `[B, out_channels, *spatial]`.

        Returns:
            The reconstructed labels `[B, num_classes]` (in the dtype of `y`
            promoted with the weights').

        Raises:
            TypeError: `y` is not a Tensor.
            ValueError: `y` does not have shape `[B, out_channels, *spatial]`.
        """
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"y must be a Tensor, got {type(y).__name__}")
        if y.ndim < 2 or y.shape[1] != self.out_channels:
            raise ValueError(
                f"y has shape {tuple(y.shape)}; expected "
                f"[batch, out_channels={self.out_channels}, *spatial]"
            )
        with torch.no_grad():
            competitor = self.competitor.weight
            label_weight = self.encoders[1].weight  # [M, C]
            dtype = torch.promote_types(y.dtype, competitor.dtype)
            y_mean = y.to(dtype).flatten(2).mean(2) if y.ndim > 2 else y.to(dtype)
            # M is M x M and M ~ E[y y^T] can be (nearly) singular: pseudo-inverse
            m_inv_y = y_mean @ torch.linalg.pinv(competitor.to(dtype)).T  # [B, M]
            return m_inv_y @ label_weight.to(dtype)  # [B, C]

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Classify with the circuit's own label pathway, without labels.

        Runs the circuit on `x` alone, `y = forward(x)`, reconstructs the label
        input that would have produced it, `label_hat = L^T M^{-1} mean_s(y)`
        (see :meth:`decode_label` for the mathematics), and returns the class of
        the largest entry. No separately trained readout is involved: `L` (the
        label encoder) and `M` (the competitor) are the circuit's weights.

        The module's training mode is left as it is: call `.eval()` first when the
        encoder has batch-norm or dropout. Nothing is stored and no gradient is
        recorded.

        Args:
            x: Input batch, as for `forward(x)`.

        Returns:
            Predicted classes, `LongTensor[B]`.

        Raises:
            TypeError: `x` is not a Tensor.
            ValueError: the circuit has an `iteration_projection` (e.g. ReLU): its
                fixed point is no linear function of the label, so the
                reconstruction above does not classify; read its outputs with a
                linear probe instead.

        Example:
            >>> import torch
            >>> circuit = SupervisedSimilarityMatching(
            ...     torch.nn.Linear(2, 2, bias=False), num_classes=2, out_channels=2)
            >>> with torch.no_grad():  # a circuit that copies x to y, label to y
            ...     _ = circuit.encoders[0].weight.copy_(torch.eye(2))
            ...     _ = circuit.encoders[1].weight.copy_(torch.eye(2))
            >>> circuit.predict(torch.tensor([[2.0, 0.5], [0.1, 1.0]]))
            tensor([0, 1])
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a Tensor, got {type(x).__name__}")
        if self.iteration_projection is not None:
            # With a projection the fixed point is no linear function of the
            # inputs and L^T M^{-1} y no reconstruction of the label: pynsm 1.0.1's
            # ReLU demo circuit would answer one class for every image (10.3% on
            # MNIST) where a linear readout of the same y reads 98.3%.
            raise ValueError(
                "predict() reconstructs the label through the linear pathway "
                "L^T M^{-1} y, which holds only for a circuit without "
                "iteration_projection; this one has "
                f"{_describe(self.iteration_projection)}. Classify its fixed points "
                "with a linear readout instead, e.g. a logistic regression on "
                "circuit(x) (pynsm.eval.linear_probe_accuracy)"
            )
        with torch.no_grad():
            return self.decode_label(self(x)).argmax(dim=1)


def _describe(function: object) -> str:
    return getattr(function, "__name__", None) or type(function).__name__


def _no_projection(y: torch.Tensor) -> None:
    pass


def _apply_competitor(weight: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """`M y` with `M` acting on the channel dimension of `[B, M, *spatial]`."""
    return torch.einsum("ij,bj...->bi...", weight, y)


def _sum_encodings(
    encodings: Sequence[torch.Tensor | None], shape: torch.Size, dtype: torch.dtype
) -> torch.Tensor:
    """Return `sum_k W_k x_k` as `[B, M]` or, with spatial dims, `[B, M, S]`.

    A single encoding of the right dtype is only viewed, not copied; it is never
    modified (the caller only reads the result).
    """
    present = [e for e in encodings if e is not None]
    batch, channels = shape[0], shape[1]
    flat_shape = (batch, channels)
    if len(shape) > 2:
        flat_shape += (math.prod(shape[2:]),)
    full = [e for e in present if e.ndim == len(shape)]
    pooled = [e for e in present if e.ndim < len(shape)]
    total = full[0].to(dtype).reshape(flat_shape)
    for enc in full[1:]:
        total = total + enc.reshape(flat_shape)
    for enc in pooled:
        # a [B, M] encoding is broadcast over the spatial positions
        total = total + enc.unsqueeze(-1)
    return total


def _check_fits_kernel(index: int, encoder: nn.Module, x: Any) -> None:
    """A clear error for images smaller than the kernel of a convolutional encoder
    (itself a convolution, or a `Sequential` starting with one)."""
    conv = encoder
    while isinstance(conv, nn.Sequential) and len(conv) > 0:
        conv = conv[0]
    if (
        not isinstance(conv, nn.modules.conv._ConvNd)
        or isinstance(conv, nn.modules.conv._ConvTransposeNd)
        or not isinstance(x, torch.Tensor)
        or x.ndim != len(conv.kernel_size) + 2
        or conv.padding == "same"  # the output is as large as the input
    ):
        return
    paddings = (0,) * len(conv.kernel_size) if conv.padding == "valid" else conv.padding
    needed = [
        dilation * (kernel - 1) + 1 - 2 * padding
        for kernel, padding, dilation in zip(conv.kernel_size, paddings, conv.dilation)
    ]
    size = tuple(x.shape[2:])
    if any(s < n for s, n in zip(size, needed)):
        raise ValueError(
            f"input {index} has shape {tuple(x.shape)}: its spatial size {size} is "
            f"smaller than the {tuple(needed)} that encoder {index}'s "
            f"{type(conv).__name__} needs (kernel_size={tuple(conv.kernel_size)}, "
            f"padding={tuple(paddings)}, dilation={tuple(conv.dilation)})"
        )
