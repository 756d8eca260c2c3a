"""Modules whose forward pass is an inner iteration.

`IterationModule` runs a short lifecycle -- `pre_iteration`, then `iteration` until
`converged` or `max_iterations`, then `post_iteration` -- with user hooks around it.
`IterationLossModule` derives each iteration from a loss: an optimizer over
`iteration_parameters()` steps on the gradients of `iteration_loss()`.

Both keep the behaviour of pynsm 1.0.1 so that circuits written for it keep working,
but they are exception safe: whatever happens inside `forward`, parameters get back
their `requires_grad` flags and per-batch state is released when `forward` ends.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

_HOOK_KINDS = ("pre", "iteration", "post")


class IterationModule(nn.Module):
    """A module whose forward pass calls `iteration()` repeatedly.

    `forward(*args, **kwargs)` runs

    1. the `"pre"` hooks, then `pre_iteration(*args, **kwargs)`;
    2. for `iteration_idx` in `0 .. max_iterations - 1`: `iteration(*args, **kwargs)`,
       then the `"iteration"` hooks (a truthy return value stops the loop), then
       `converged(*args, **kwargs)` (true stops the loop);
    3. `post_iteration(*args, **kwargs)`, whose return value `forward` returns, then the
       `"post"` hooks;
    4. finally, whether or not an exception escaped, `release_iteration_state()`.

    Subclasses implement `iteration()` and optionally the other steps.

    Args:
        max_iterations: maximum number of `iteration()` calls in one forward pass.
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
        >>> Halve(max_iterations=10)(torch.tensor([8.0]))
        tensor([0.5000])
    """

    def __init__(self, max_iterations: int = 1000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(max_iterations, bool) or not isinstance(max_iterations, int):
            raise TypeError(
                f"max_iterations must be an int, got {type(max_iterations).__name__}"
            )
        if max_iterations < 0:
            raise ValueError(f"max_iterations must be >= 0, got {max_iterations}")
        self.max_iterations = max_iterations
        self.hooks: dict[str, list[Callable]] = defaultdict(list)
        self.iteration_idx = -1

    def register_iteration_hook(self, kind: str, hook: Callable) -> None:
        """Register a hook on the forward iteration.

        Kinds:

        * `"pre"`: `hook(module)`, called before `pre_iteration()`;
        * `"iteration"`: `hook(module) -> bool`, called after every `iteration()` and
          before `converged()`; a truthy return value ends the iteration. The index of
          the current iteration is `module.iteration_idx`;
        * `"post"`: `hook(module)`, called after `post_iteration()`.

        Several hooks may be attached to the same event; they run in order.

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
        self.iteration_idx = -1
        try:
            self._call_hooks(self.hooks["pre"])
            self.pre_iteration(*args, **kwargs)
            for i in range(self.max_iterations):
                self.iteration_idx = i
                self.iteration(*args, **kwargs)
                if self._call_hooks(self.hooks["iteration"], check_output=True):
                    break
                if self.converged(*args, **kwargs):
                    break
            result = self.post_iteration(*args, **kwargs)
            self._call_hooks(self.hooks["post"])
            return result
        finally:
            self.release_iteration_state()

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

    def _call_hooks(self, hooks: list[Callable], check_output: bool = False) -> bool:
        for hook in hooks:
            if hook(self) and check_output:
                return True
        return False


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
        iteration_lr: learning rate of the iteration; used unless `it_optim_kwargs`
            has an `"lr"` entry.
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
        it_optim_kwargs: dict[str, Any] | None = None,
        it_sched_kwargs: dict[str, Any] | None = None,
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
        self.iteration_optimizer = None
        self.iteration_scheduler = None
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
        saved, self._saved_requires_grad = self._saved_requires_grad, None
        if saved is None:
            return
        flags, iteration_params = saved
        for param in iteration_params:
            if param.is_leaf:
                param.requires_grad_(False)
        for param, flag in flags:
            param.requires_grad_(flag)
