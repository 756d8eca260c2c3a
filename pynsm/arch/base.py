"""Modules whose forward pass is an inner iteration.

`IterationModule.forward` is the one place where the lifecycle runs -- `"pre"` hooks,
`pre_iteration`, then `iteration` until `converged` or `max_iterations`, then
`post_iteration` and the `"post"` hooks. A subclass may also supply a *fused
iteration* (the whole loop in one call, for speed); `forward` then decides per call,
by the rule in its docstring, which of the two strategies runs, and calls the hooks
the same way for both. `IterationLossModule` derives each iteration from a loss: an
optimizer over `iteration_parameters()` steps on the gradients of `iteration_loss()`.

Both keep the behaviour of pynsm 1.0.1 so that circuits written for it keep working,
but they are exception safe: whatever happens inside `forward`, parameters get back
their `requires_grad` flags and per-batch state is released when `forward` ends.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from ..validation import check_float, check_int

_HOOK_KINDS = ("pre", "iteration", "post")

# what a fused iteration calls after its iteration `idx`; true means "stop here"
FusedIterationCallback = Callable[[int], bool]


class IterationModule(nn.Module):
    """A module whose forward pass calls `iteration()` repeatedly.

    `forward(*args, **kwargs)` runs

    1. the `"pre"` hooks;
    2. then either the *general* strategy:

       a. `pre_iteration(*args, **kwargs)`;
       b. for `iteration_idx` in `0 .. max_iterations - 1`: `iteration(*args,
          **kwargs)`, then the `"iteration"` hooks (one that asks to stop ends the
          loop), then `converged(*args, **kwargs)` (true ends the loop);
       c. `post_iteration(*args, **kwargs)`, whose return value `forward` returns;

       or the *fused* strategy, `fused_iteration(on_iteration, *args, **kwargs)`,
       which does a.--c. in one call and calls `on_iteration(idx)` -- the
       `"iteration"` hooks -- after every iteration `idx`;
    3. the `"post"` hooks;
    4. finally, whether or not an exception escaped, `release_iteration_state()`.

    **Which strategy runs.** The fused one is taken on a call when, after the
    `"pre"` hooks, `uses_fused_iteration()` is true, that is when

    * the class provides `fused_iteration` (this base class does not);
    * `fused_iteration_supported()` is true (the settings it needs, e.g. plain SGD
      for `IterationLossModule` circuits);
    * each method named in `fused_replaces` -- the methods the fused iteration
      stands in for -- is, looked up on this very module, the one of the class
      that provides `fused_iteration`. A method replaced in a subclass *or on the
      instance* (`module.converged = my_test`) is never skipped: that call takes
      the general strategy, so the replacement runs.

    **Hooks** receive the module. What they see is the same for both strategies:
    `iteration_idx` is -1 in `"pre"` hooks, the index of the current iteration in
    `"iteration"` hooks and that of the last iteration run in `"post"` hooks;
    subclasses document their own state (e.g. the current iterate). The return
    value of `"pre"` and `"post"` hooks is ignored, whatever it is. An
    `"iteration"` hook stops the loop by returning a true value (`True`, a
    non-zero number, a one-element tensor that is non-zero); `None` and false
    values let it go on; a value without a single truth value (e.g. a tensor of
    several elements) is a `TypeError`. Hooks run in the caller's grad mode.

    Subclasses implement `iteration()` and optionally the other steps.

    Args:
        max_iterations: maximum number of `iteration()` calls in one forward pass
            (an integer >= 0, NumPy integers included).
        **kwargs: passed on to `nn.Module`.

    Example:
        >>> import torch
        >>> class Halve(IterationModule):
        ...     def pre_iteration(self, x):
        ...         self.value = x.clone()
        ...     def iteration(self, x):
        ...         self.value /= 2
        ...     def converged(self, x):
        ...         return bool(self.value.abs().max() < 1)
        ...     def post_iteration(self, x):
        ...         return self.value
        >>> halve = Halve(max_iterations=10)
        >>> halve(torch.tensor([8.0]))
        tensor([0.5000])
        >>> halve.iteration_idx  # 8 -> 4 -> 2 -> 1 -> 0.5: four iterations
        3
    """

    #: Names of the lifecycle methods that `fused_iteration` stands in for.
    fused_replaces: ClassVar[tuple[str, ...]] = ()

    def __init__(self, max_iterations: int = 1000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_iterations = check_int("max_iterations", max_iterations, minimum=0)
        self.hooks: dict[str, list[Callable]] = defaultdict(list)
        self.iteration_idx = -1

    def register_iteration_hook(self, kind: str, hook: Callable) -> None:
        """Register a hook on the forward iteration.

        Kinds:

        * `"pre"`: `hook(module)`, called before `pre_iteration()`;
        * `"iteration"`: `hook(module)`, called after every `iteration()` and before
          `converged()`; a true return value ends the iteration. The index of the
          current iteration is `module.iteration_idx`;
        * `"post"`: `hook(module)`, called after `post_iteration()`.

        Several hooks may be attached to the same event; they run in order (an
        `"iteration"` hook that stops the loop skips the ones after it). See the
        class docstring for what hooks see and what their return value means.

        Args:
            kind: `"pre"`, `"iteration"` or `"post"`.
            hook: the function to call.
        """
        if kind not in _HOOK_KINDS:
            raise ValueError(
                f"Unknown event type in register_iteration_hook: {kind!r}; "
                f"expected one of {_HOOK_KINDS}"
            )
        if not callable(hook):
            raise TypeError(f"hook must be callable, got {type(hook).__name__}")
        self.hooks[kind].append(hook)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the iteration lifecycle; see the class docstring."""
        set_state(self, iteration_idx=-1)
        grad_enabled = torch.is_grad_enabled()
        try:
            for hook in self.hooks["pre"]:
                hook(self)
            if self.uses_fused_iteration():
                result, last_idx = self.fused_iteration(
                    self._fused_callback(grad_enabled), *args, **kwargs
                )
                set_state(self, iteration_idx=last_idx)
            else:
                result = self._iterate(*args, **kwargs)
            for hook in self.hooks["post"]:
                hook(self)
            return result
        finally:
            self.release_iteration_state()

    def _iterate(self, *args: Any, **kwargs: Any) -> Any:
        """The general strategy: steps a.--c. of the class docstring."""
        self.pre_iteration(*args, **kwargs)
        for i in range(self.max_iterations):
            self.iteration_idx = i
            self.iteration(*args, **kwargs)
            if self._run_iteration_hooks():
                break
            if self.converged(*args, **kwargs):
                break
        return self.post_iteration(*args, **kwargs)

    def _fused_callback(self, grad_enabled: bool) -> FusedIterationCallback | None:
        """What the fused iteration calls after each iteration; `None` without
        `"iteration"` hooks, so that it may skip per-iteration work entirely."""
        if not self.hooks["iteration"]:
            return None

        def on_iteration(idx: int) -> bool:
            set_state(self, iteration_idx=idx)
            # the fused loop runs without autograd; hooks get the caller's mode
            with torch.set_grad_enabled(grad_enabled):
                return self._run_iteration_hooks()

        return on_iteration

    def _run_iteration_hooks(self) -> bool:
        """Call the `"iteration"` hooks in order; true once one asks to stop."""
        for hook in self.hooks["iteration"]:
            if _asks_to_stop(hook(self)):
                return True
        return False

    # ------------------------------------------------------- the fused strategy
    def uses_fused_iteration(self) -> bool:
        """Whether `forward` would take the fused strategy now (see the class
        docstring for the rule)."""
        cls = type(self)
        provider = _class_defining(cls, "fused_iteration")
        if provider is IterationModule or not self.fused_iteration_supported():
            return False
        # a method replaced on the instance lives in its __dict__; one replaced in
        # a subclass differs on the class (no bound methods to build: per-call cost)
        instance = self.__dict__
        for name in provider.fused_replaces:
            own = getattr(provider, name)
            if name in instance:  # replaced, or the own method bound again
                if getattr(instance[name], "__func__", None) is not own:
                    return False
            elif getattr(cls, name) is not own:
                return False
        return True

    def fused_iteration_supported(self) -> bool:
        """Whether the module's settings allow its fused iteration (default: no)."""
        return False

    def fused_iteration(
        self,
        on_iteration: FusedIterationCallback | None,
        *args: Any,
        **kwargs: Any,
    ) -> tuple[Any, int]:
        """Run `pre_iteration`, the iterations and `post_iteration` in one call.

        Subclasses that provide it must give the same result as the general
        strategy, and list in `fused_replaces` the methods it stands in for.

        Args:
            on_iteration: `None`, or a function to call with the index of every
                iteration once the module's documented state shows that
                iteration; a true return value ends the iteration there.
            *args: the arguments of `forward`.
            **kwargs: the keyword arguments of `forward`.

        Returns:
            `(result, last_idx)`: what `forward` returns, and the index of the
            last iteration run (-1 for none).
        """
        raise NotImplementedError(
            f"Module [{type(self).__name__}] has no fused iteration"
        )

    # ------------------------------------------------------- lifecycle methods
    def iteration(self, *args: Any, **kwargs: Any) -> None:
        """Run one iteration. Must be implemented by subclasses."""
        raise NotImplementedError(
            f'Module [{type(self).__name__}] is missing the required "iteration" '
            "function"
        )

    def converged(self, *args: Any, **kwargs: Any) -> bool:
        """Whether the iteration has converged. Always false unless overridden."""
        return False

    def pre_iteration(self, *args: Any, **kwargs: Any) -> None:
        """Set up the iteration. Does nothing unless overridden."""

    def post_iteration(self, *args: Any, **kwargs: Any) -> Any:
        """Finish the iteration and return `forward`'s result (None by default)."""
        return None

    def release_iteration_state(self) -> None:
        """Drop per-forward state; called when `forward` ends, even on error.

        Does nothing by default. Override to release batch-sized tensors so that the
        module does not keep the last batch alive.
        """


class IterationLossModule(IterationModule):
    """An `IterationModule` whose iteration descends a loss with an optimizer.

    `pre_iteration()` turns on `requires_grad` for `iteration_parameters()`, turns it
    off for the module's `parameters()` (so the iteration does not touch their
    gradients) and builds the optimizer (and scheduler, if any). Each `iteration()`
    calls `iteration_set_gradients()` (by default: backward of `iteration_loss()`,
    whose value is stored in `last_iteration_loss`), steps the optimizer and the
    scheduler, then applies `iteration_projection` to every iteration parameter.
    `post_iteration()` switches `requires_grad` back. If anything raises in between,
    the flags are restored all the same.

    Subclasses implement `iteration_loss()` (or override `iteration_set_gradients()`)
    and `iteration_parameters()`. Iteration parameters are usually plain tensors, not
    `nn.Parameter`s, so that they are not trained by the outer optimizer.

    Args:
        iteration_optimizer: optimizer class for the iteration, e.g. `torch.optim.SGD`.
        iteration_scheduler: optional scheduler class, e.g.
            `torch.optim.lr_scheduler.StepLR`.
        iteration_lr: learning rate of the iteration (finite, > 0); used unless
            `it_optim_kwargs` has an `"lr"` entry.
        it_optim_kwargs: keyword arguments for the optimizer.
        it_sched_kwargs: keyword arguments for the scheduler.
        iteration_projection: optional callable applied to each iteration parameter
            after every optimizer step, e.g. `torch.nn.functional.relu`.
        **kwargs: passed on to `IterationModule` (e.g. `max_iterations`).

    Example:
        >>> import torch
        >>> class Mean(IterationLossModule):
        ...     def pre_iteration(self, x):
        ...         self.m = torch.zeros(x.shape[1])
        ...         super().pre_iteration(x)
        ...     def iteration_parameters(self):
        ...         return [self.m]
        ...     def iteration_loss(self, x):
        ...         return 0.5 * ((x - self.m) ** 2).sum(dim=1).mean()
        ...     def post_iteration(self, x):
        ...         super().post_iteration(x)
        ...         return self.m.detach()
        >>> x = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
        >>> Mean(max_iterations=50, iteration_lr=0.5)(x)
        tensor([2., 4.])
    """

    def __init__(
        self,
        iteration_optimizer: Callable = torch.optim.SGD,
        iteration_scheduler: Callable | None = None,
        iteration_lr: float = 1.0,
        it_optim_kwargs: Mapping[str, Any] | None = None,
        it_sched_kwargs: Mapping[str, Any] | None = None,
        iteration_projection: Callable | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not callable(iteration_optimizer):
            raise TypeError("iteration_optimizer must be an optimizer class")
        if iteration_scheduler is not None and not callable(iteration_scheduler):
            raise TypeError("iteration_scheduler must be a scheduler class or None")
        if iteration_projection is not None and not callable(iteration_projection):
            raise TypeError("iteration_projection must be callable or None")
        iteration_lr = check_float("iteration_lr", iteration_lr, minimum=0, strict=True)
        for name, value in (
            ("it_optim_kwargs", it_optim_kwargs),
            ("it_sched_kwargs", it_sched_kwargs),
        ):
            if value is not None and not isinstance(value, Mapping):
                raise TypeError(
                    f"{name} must be a mapping or None, got {type(value).__name__}"
                )

        self.it_construct_optim = iteration_optimizer
        self.it_construct_sched = iteration_scheduler
        self.it_optim_kwargs = dict(it_optim_kwargs) if it_optim_kwargs else {}
        self.it_optim_kwargs.setdefault("lr", iteration_lr)
        self.it_sched_kwargs = dict(it_sched_kwargs) if it_sched_kwargs else {}

        self.iteration_optimizer: torch.optim.Optimizer | None = None
        self.iteration_scheduler: Any = None
        self.iteration_projection = iteration_projection
        self.last_iteration_loss: float | None = None
        # requires_grad flags saved by pre_iteration, restored by post_iteration
        self._saved_requires_grad: tuple[list, list] | None = None

    def iteration(self, *args: Any, **kwargs: Any) -> None:
        """Set gradients, step optimizer and scheduler, then project."""
        self.iteration_set_gradients(*args, **kwargs)
        self.iteration_optimizer.step()
        if self.iteration_scheduler is not None:
            self.iteration_scheduler.step()
        if self.iteration_projection is not None:
            with torch.no_grad():
                for param in self.iteration_parameters():
                    param.data = self.iteration_projection(param.data)

    def pre_iteration(self, *args: Any, **kwargs: Any) -> None:
        """Switch `requires_grad` flags and build the optimizer and scheduler."""
        super().pre_iteration(*args, **kwargs)
        self._switch_requires_grad()
        self.iteration_optimizer = self.it_construct_optim(
            self.iteration_parameters(), **self.it_optim_kwargs
        )
        if self.it_construct_sched is not None:
            self.iteration_scheduler = self.it_construct_sched(
                self.iteration_optimizer, **self.it_sched_kwargs
            )

    def post_iteration(self, *args: Any, **kwargs: Any) -> Any:
        """Restore the `requires_grad` flags changed by `pre_iteration()`."""
        self._restore_requires_grad()
        return super().post_iteration(*args, **kwargs)

    def release_iteration_state(self) -> None:
        """Restore `requires_grad` flags if still switched; drop optimizer state."""
        self._restore_requires_grad()
        # the optimizer and scheduler hold the (batch-sized) iteration parameters
        set_state(self, iteration_optimizer=None, iteration_scheduler=None)
        super().release_iteration_state()

    def iteration_set_gradients(self, *args: Any, **kwargs: Any) -> None:
        """Fill `.grad` of the iteration parameters: backward of `iteration_loss()`.

        Override to use manually computed gradients instead.
        """
        self.iteration_optimizer.zero_grad()
        with torch.enable_grad():
            loss = self.iteration_loss(*args, **kwargs)
            loss.backward()
        self.last_iteration_loss = loss.item()

    def iteration_loss(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Loss descended by the iteration. Must be implemented by subclasses."""
        raise NotImplementedError(
            f'Module [{type(self).__name__}] is missing the required "iteration_loss" '
            "function"
        )

    def iteration_parameters(self) -> list[torch.Tensor]:
        """Tensors optimized by the iteration. Must be implemented by subclasses."""
        raise NotImplementedError(
            f"Module [{type(self).__name__}] is missing the required "
            '"iteration_parameters" function'
        )

    def _switch_requires_grad(self) -> None:
        iteration_params = list(self.iteration_parameters())
        # save before switching anything, so that a failure here changes nothing
        self._saved_requires_grad = (
            [(p, p.requires_grad) for p in self.parameters()],
            iteration_params,
        )
        for param in iteration_params:
            param.requires_grad_(True)
        for param in self.parameters():
            param.requires_grad_(False)

    def _restore_requires_grad(self) -> None:
        saved = self._saved_requires_grad
        set_state(self, _saved_requires_grad=None)
        if saved is None:
            return
        flags, iteration_params = saved
        for param in iteration_params:
            if param.is_leaf:
                param.requires_grad_(False)
        for param, flag in flags:
            param.requires_grad_(flag)


def set_state(module: nn.Module, **values: Any) -> None:
    """Set per-call state (plain attributes: iterates, indices, optimizer) on
    `module` directly in its `__dict__`, skipping `nn.Module.__setattr__`'s checks
    for parameters, buffers and submodules, which were a large part of a small
    forward call's overhead. Only for names that are none of those."""
    module.__dict__.update(values)


def _class_defining(cls: type, name: str) -> type:
    """The first class in `cls`'s method resolution order that defines `name`."""
    return next(klass for klass in cls.__mro__ if name in vars(klass))


def _asks_to_stop(value: Any) -> bool:
    """Whether an `"iteration"` hook's return value asks the loop to stop."""
    if value is None:
        return False
    try:
        return bool(value)
    except (RuntimeError, ValueError):  # torch and NumPy: ambiguous truth value
        shape = tuple(getattr(value, "shape", ()))
        raise TypeError(
            f"an 'iteration' hook returned a {type(value).__name__} of shape "
            f"{shape}, which has no single truth value; return True to stop the "
            "iteration, or None/False to go on"
        ) from None
