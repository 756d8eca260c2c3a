"""Optional Lightning adapter: any task of :mod:`pynsm.train` as a ``LightningModule``.

Lightning is an extra (``pip install "pynsm[lightning]"``); it is imported only
when :func:`to_lightning` is called.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from pynsm.train.hooks import call_hook, check_task, step_metrics
from pynsm.train.optim import OptimizerSpec, build_optimizer, build_scheduler
from pynsm.validation import check_float

__all__ = ["to_lightning"]


def _import_lightning() -> Any:
    try:
        import lightning
    except ImportError as exc:
        raise ImportError(
            "pynsm.train.lightning needs Lightning: pip install 'pynsm[lightning]'"
        ) from exc
    return lightning


def to_lightning(
    task: nn.Module,
    optimizer: OptimizerSpec | None = None,
    lr: float | None = None,
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
) -> Any:
    """Wrap a task into a ``lightning.LightningModule``.

    The module's ``training_step`` returns ``task.training_loss(batch)`` (logged as
    ``train_loss``); the task's hooks are called from Lightning's:
    ``on_train_epoch_start`` → ``on_epoch_start(epoch, max_epochs)``,
    ``on_after_backward`` → ``on_after_backward(epoch)``, and after every optimizer
    step → ``on_after_optimizer_step(step, total_steps)`` with ``total_steps`` from
    ``trainer.estimated_stepping_batches``, then ``step_metrics()``, whose values
    are logged (per step and as epoch means, on the progress bar). The task
    contract, the hook calls and the optimizer construction are those of
    :class:`~pynsm.train.Trainer` (:mod:`pynsm.train.hooks`,
    :func:`~pynsm.train.optim.build_optimizer`: SGD with ``lr`` 0.01 by default,
    or an optimizer class / callable ``params -> optimizer``). Distributed
    strategies (``"ddp"``) work as for any LightningModule.

    Args:
        task: A task (``nn.Module`` with ``training_loss``), e.g. a
            :class:`~pynsm.train.CircuitTask` or :class:`pynsm.ssl.swav.SwaV`.
        optimizer: Optimizer class or callable ``params -> optimizer``.
        lr: Learning rate given to an optimizer class.
        scheduler: Callable ``optimizer -> scheduler`` (stepped every epoch).

    Returns:
        A ``LightningModule`` whose ``task`` attribute is the wrapped task.

    Raises:
        ImportError: Lightning is not installed.

    Example:
        >>> import lightning, torch
        >>> from torch import nn
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from pynsm.arch import SimilarityMatching
        >>> from pynsm.train import CircuitTask
        >>> from pynsm.train.lightning import to_lightning
        >>> module = to_lightning(CircuitTask(SimilarityMatching(nn.Linear(6, 3), 3)))
        >>> trainer = lightning.Trainer(max_epochs=1, logger=False,
        ...     enable_checkpointing=False, enable_progress_bar=False,
        ...     enable_model_summary=False, accelerator="cpu")
        >>> loader = DataLoader(TensorDataset(torch.randn(16, 6)), batch_size=8)
        >>> trainer.fit(module, loader)
        >>> trainer.global_step
        2
    """
    lightning = _import_lightning()
    check_task(task)
    if lr is not None:
        lr = check_float("lr", lr, minimum=0.0, strict=True)

    class TaskModule(lightning.LightningModule):
        """A pynsm task trained by ``lightning.Trainer``."""

        def __init__(self) -> None:
            super().__init__()
            self.task = task

        def forward(self, batch: Any) -> torch.Tensor:
            return self.task.training_loss(batch)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = self.task.training_loss(batch)
            batch_size = _batch_size(batch)
            self.log("train_loss", loss, prog_bar=True, batch_size=batch_size)
            return loss

        def on_train_epoch_start(self) -> None:
            call_hook(
                self.task, "on_epoch_start", self.current_epoch, self.trainer.max_epochs
            )

        def on_after_backward(self) -> None:
            call_hook(self.task, "on_after_backward", self.current_epoch)

        def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
            super().optimizer_step(*args, **kwargs)
            # Lightning counts this step only after the hook returns: global_step is
            # still the 0-based index of the step just taken
            call_hook(
                self.task,
                "on_after_optimizer_step",
                self.global_step,
                int(self.trainer.estimated_stepping_batches),
            )
            for name, value in step_metrics(self.task).items():
                self.log(name, value, on_step=True, on_epoch=True, prog_bar=True)

        def configure_optimizers(self) -> Any:
            opt = build_optimizer(optimizer, self.task, lr)
            if scheduler is None:
                return opt
            return {"optimizer": opt, "lr_scheduler": build_scheduler(scheduler, opt)}

    return TaskModule()


def _batch_size(batch: Any) -> int:
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    return int(first.shape[0]) if isinstance(first, torch.Tensor) else 1
