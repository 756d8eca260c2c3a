"""One training loop for circuits and self-supervised models."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from pynsm.train.data import build_loader, check_not_empty, to_device
from pynsm.train.ddp import wrap_ddp
from pynsm.train.divergence import all_finite, check_finite_weights, loss_diverged
from pynsm.train.epoch import postfix, reduce_epoch, run_epoch_metrics
from pynsm.train.errors import TrainingDiverged
from pynsm.train.hooks import TaskForward, call_hook, check_task
from pynsm.train.hooks import step_metrics as task_step_metrics
from pynsm.train.launch import (
    env_rank,
    env_world_size,
    init_distributed_from_env,
    resolve_device,
)
from pynsm.train.lock import checkpoint_lock
from pynsm.train.optim import (
    OptimizerSpec,
    SchedulerSpec,
    build_optimizer,
    build_scheduler,
)
from pynsm.train.precision import autocast, resolve_precision
from pynsm.train.progress import progress_bar
from pynsm.train.resume import restore_trainer, trainer_state, write_trainer_checkpoint
from pynsm.train.signals import SignalGuard
from pynsm.train.state import check_metadata
from pynsm.validation import check_bool, check_choice, check_float, check_int

__all__ = ["Trainer"]

_NONFINITE = ("raise", "skip")


class Trainer:
    """Trains a *task*: any ``nn.Module`` with ``training_loss(batch) -> Tensor``.

    The task contract is :class:`~pynsm.train.hooks.TrainingTask`: besides
    ``training_loss(batch)`` (scalar loss of one DataLoader batch), the optional
    hooks ``on_epoch_start(epoch, num_epochs)``, ``on_after_backward(epoch)``,
    ``on_after_optimizer_step(step, total_steps)``, ``step_metrics()`` and
    ``embed(x)``. Circuits are adapted with :class:`~pynsm.train.CircuitTask`.

    The trainer owns device placement, the optimizer and scheduler, mixed precision
    on CUDA (bf16, or fp16 with a gradient scaler), gradient clipping, a progress
    bar, the per-epoch :attr:`history`, a divergence guard, atomic checksummed
    checkpoints with exact, all-or-nothing resume, a clean stop on SIGINT/SIGTERM,
    and distributed data parallel training under ``torchrun`` (gloo on the CPU,
    NCCL on CUDA; each process loads its share of every epoch through a
    :class:`~torch.utils.data.DistributedSampler`; only rank 0 shows progress and
    writes checkpoints). A process group that :meth:`fit` starts is kept for
    later fits and destroyed when the process exits.

    Args:
        task: The task to train.
        epochs: Total number of epochs (a resumed run continues up to it).
        batch_size: Batch size *per process* when :meth:`fit` gets a dataset.
        optimizer: An optimizer over ``task.parameters()``, an optimizer class, or a
            callable ``params -> optimizer``. Default: SGD.
        lr: Learning rate given to an optimizer class (default 0.01 for the default
            SGD); finite and > 0; ignored for instances and other callables.
        scheduler: A learning-rate scheduler instance or a callable
            ``optimizer -> scheduler``.
        scheduler_interval: Step the scheduler every ``"epoch"`` or ``"step"``.
        device: Where to train (default: ``cuda:LOCAL_RANK`` if available, else CPU);
            a device this torch or machine does not have is a ``ValueError``.
        mixed_precision: ``"auto"`` (bf16 or fp16 on CUDA, off on the CPU),
            ``"bf16"``, ``"fp16"`` (CUDA only, with a ``GradScaler``) or ``"off"``.
        grad_clip_norm: Clip the global gradient norm to this value (> 0).
        checkpoint_path: File for the checkpoint written after every epoch. While
            :meth:`fit` runs, ``<checkpoint_path>.lock`` keeps a second run from
            writing the same file.
        seed: Seed of the data order (the sampler shuffles with ``seed + epoch``).
        shuffle: Shuffle the dataset each epoch.
        drop_last: Drop the last incomplete batch.
        num_workers: DataLoader worker processes.
        progress: Show a progress bar (rank 0 only).
        sync_batchnorm: Convert batch norms to ``SyncBatchNorm`` when distributed
            (CUDA only: torch has no CPU kernel for it).
        find_unused_parameters: Passed to ``DistributedDataParallel``.
        broadcast_buffers: Under DDP, copy rank 0's buffers (e.g. BatchNorm
            statistics) to every process before each forward, except those of
            submodules marked ``ddp_rank_local = True`` (see
            :mod:`pynsm.train.ddp`), which stay each process's own.
        on_nonfinite: What a NaN or infinite loss does, detected before its step
            is applied (all processes agree): ``"raise"``
            :class:`~pynsm.train.TrainingDiverged` (the last checkpoint is kept),
            or ``"skip"`` the batch (counted as ``skipped_steps`` in the history;
            an epoch in which every batch is skipped still raises). Weights that
            are not finite at the end of an epoch always raise, before any
            checkpoint is written.
        epoch_metrics: ``task -> {name: number}``, called after every epoch on
            rank 0 with the task in eval mode under ``torch.no_grad`` (the modes
            are restored after). The values join that epoch's history entry and
            the progress bar. The random generators are saved and restored around
            it, so training with or without it is bit-identical.
        checkpoint_metadata: JSON-like dict stored in every checkpoint under
            ``"metadata"`` (e.g. what is needed to rebuild the model).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch.utils.data import TensorDataset
        >>> from pynsm.arch import SimilarityMatching
        >>> from pynsm.train import CircuitTask, Trainer
        >>> data = TensorDataset(torch.randn(64, 10))
        >>> task = CircuitTask(SimilarityMatching(nn.Linear(10, 4), 4))
        >>> trainer = Trainer(task, epochs=2, batch_size=16, progress=False,
        ...                   epoch_metrics=lambda t: {"w_norm": t.circuit.encoder
        ...                                            .weight.norm()})
        >>> history = trainer.fit(data)
        >>> [entry["epoch"] for entry in history]
        [1, 2]
        >>> sorted(history[-1])
        ['epoch', 'loss', 'lr', 'residual', 'seconds', 'w_norm']
    """

    def __init__(
        self,
        task: nn.Module,
        *,
        epochs: int = 10,
        batch_size: int = 32,
        optimizer: OptimizerSpec | None = None,
        lr: float | None = None,
        scheduler: SchedulerSpec | None = None,
        scheduler_interval: str = "epoch",
        device: str | torch.device | None = None,
        mixed_precision: str | bool | None = "auto",
        grad_clip_norm: float | None = None,
        checkpoint_path: str | os.PathLike[str] | None = None,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        num_workers: int = 0,
        progress: bool = True,
        sync_batchnorm: bool = False,
        find_unused_parameters: bool = False,
        broadcast_buffers: bool = True,
        on_nonfinite: str = "raise",
        epoch_metrics: Callable[[nn.Module], Mapping[str, float]] | None = None,
        checkpoint_metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.task = check_task(task)
        self.epochs = check_int("epochs", epochs, minimum=0)
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.num_workers = check_int("num_workers", num_workers, minimum=0)
        self.seed = check_int("seed", seed, minimum=-(2**63), maximum=2**63 - 1)
        if lr is not None:
            lr = check_float("lr", lr, minimum=0.0, strict=True)
        self.grad_clip_norm = (
            None
            if grad_clip_norm is None
            else check_float("grad_clip_norm", grad_clip_norm, minimum=0.0, strict=True)
        )
        self.scheduler_interval = check_choice(
            "scheduler_interval", scheduler_interval, ("epoch", "step")
        )
        self.on_nonfinite = check_choice("on_nonfinite", on_nonfinite, _NONFINITE)
        self.shuffle = check_bool("shuffle", shuffle)
        self.drop_last = check_bool("drop_last", drop_last)
        self.progress = check_bool("progress", progress)
        self.broadcast_buffers = check_bool("broadcast_buffers", broadcast_buffers)
        self.find_unused_parameters = check_bool(
            "find_unused_parameters", find_unused_parameters
        )
        sync_batchnorm = check_bool("sync_batchnorm", sync_batchnorm)
        if epoch_metrics is not None and not callable(epoch_metrics):
            raise TypeError(
                "epoch_metrics must be a callable task -> {name: value}, got "
                f"{type(epoch_metrics).__name__}"
            )
        self.epoch_metrics = epoch_metrics
        self.checkpoint_metadata = (
            None if checkpoint_metadata is None else check_metadata(checkpoint_metadata)
        )
        self.checkpoint_path = (
            None if checkpoint_path is None else os.fspath(checkpoint_path)
        )

        self.world_size = env_world_size()
        self.rank = env_rank()
        self.device = resolve_device(device)
        self.precision = resolve_precision(mixed_precision, self.device)
        if sync_batchnorm and self.world_size > 1:
            if self.device.type != "cuda":
                # torch's SyncBatchNorm has no CPU kernel
                raise ValueError("sync_batchnorm=True needs CUDA devices")
            self.task = nn.SyncBatchNorm.convert_sync_batchnorm(self.task)
        self.task.to(self.device)
        self.optimizer = build_optimizer(optimizer, self.task, lr)
        self.scheduler = build_scheduler(scheduler, self.optimizer)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self._forward: nn.Module = TaskForward(self.task)
        self._buffer_sync: Callable[[], None] | None = None

        self.epoch = 0  # completed epochs
        self.step = 0  # optimizer steps taken
        self.history: list[dict[str, float]] = []

    # ------------------------------------------------------------------ training
    def fit(
        self,
        data: Dataset | DataLoader,
        *,
        resume: bool | str | os.PathLike[str] = False,
        allow_setting_changes: bool = False,
    ) -> list[dict[str, float]]:
        """Train up to :attr:`epochs` epochs and return the history.

        Args:
            data: A dataset (the trainer builds the loader: per-process batches of
                ``batch_size``, shuffled with ``seed + epoch``) or a ready
                DataLoader (used as given; its sampler's ``set_epoch`` is called).
            resume: ``True`` to continue from :attr:`checkpoint_path`, or a path to
                a checkpoint. Model, optimizer, scheduler, scaler, RNG states,
                epoch, step and history are restored, so the run continues exactly
                as if it had never stopped. The checkpoint must have been written
                with the same ``seed``, ``batch_size`` and number of processes
                (they decide the data order).
            allow_setting_changes: Resume even if ``seed``, ``batch_size`` or the
                number of processes differ from the checkpoint's (the run then
                continues with another data order than it started with).

        Returns:
            :attr:`history`: one dict per completed epoch with ``epoch`` (1-based),
            ``loss`` (mean training loss over the epoch and all processes),
            ``seconds``, ``lr``, the epoch means of the task's ``step_metrics()``,
            the ``epoch_metrics`` values, and ``skipped_steps`` with
            ``on_nonfinite="skip"``.

        Raises:
            ValueError: ``data`` is empty (no batch to train on).
            FileNotFoundError: ``resume`` asks for a checkpoint that does not exist.
            CheckpointError: the checkpoint is corrupt, foreign, or does not fit
                (nothing is changed then).
            ResumeSettingsError: the checkpoint was written with another
                ``seed``, ``batch_size`` or number of processes (a
                :class:`~pynsm.train.CheckpointError`; nothing is changed then).
            CheckpointInUseError: another run is writing :attr:`checkpoint_path`.
            TrainingDiverged: the loss became non-finite (``on_nonfinite="raise"``).
            TrainingInterrupted: SIGINT or SIGTERM arrived; any checkpoint write
                finished first. While the process waits for the others in C++
                (the rendezvous; rank 0's ``epoch_metrics`` seen from the other
                ranks) the signal ends the process at once instead (see
                :mod:`pynsm.train.signals`).
        """
        check_not_empty(data)
        check_bool("allow_setting_changes", allow_setting_changes)
        if resume:
            resume_path = self.checkpoint_path if resume is True else os.fspath(resume)
            if resume_path is None:
                raise ValueError("resume=True needs a checkpoint_path")
        guard = SignalGuard()
        with guard, contextlib.ExitStack() as stack:
            # the rendezvous, the agreement on the lock and DDP's first broadcast
            # wait in C++ for the other processes: a signal ends the process there
            with guard.blocking():
                init_distributed_from_env()
                self.world_size, self.rank = env_world_size(), env_rank()
                stack.enter_context(
                    checkpoint_lock(self.checkpoint_path, self.rank, self.world_size)
                )
                self._wrap_for_distributed()
            if resume:
                with guard.critical():  # a restore is not cut in half
                    self.load_checkpoint(
                        resume_path, allow_setting_changes=allow_setting_changes
                    )
            self._run(self._loader(data), guard)
        return self.history

    def _run(self, loader: DataLoader, guard: SignalGuard) -> None:
        steps_per_epoch = len(loader)
        total_steps = self.epochs * steps_per_epoch
        remaining = max(self.epochs - self.epoch, 0) * steps_per_epoch
        bar = progress_bar(
            total=remaining,
            disable=not (self.progress and self.rank == 0),
            desc="train",
            unit="batch",
            dynamic_ncols=True,
        )
        try:
            for epoch in range(self.epoch, self.epochs):
                self._train_epoch(loader, epoch, total_steps, bar, guard)
                check_finite_weights(
                    self.task,
                    epoch=epoch,
                    step=self.step,
                    epochs_done=epoch,
                    checkpoint_path=self.checkpoint_path,
                )
                if self.checkpoint_path is not None:
                    with guard.critical():  # a signal waits for the write to end
                        self.save_checkpoint(self.checkpoint_path)
        finally:
            bar.close()

    def _train_epoch(
        self,
        loader: DataLoader,
        epoch: int,
        total_steps: int,
        bar: Any,
        guard: SignalGuard,
    ) -> None:
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        call_hook(self.task, "on_epoch_start", epoch, self.epochs)
        self.task.train()
        start = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        sums: dict[str, Any] = {}
        batches = skipped = 0
        for index, batch in enumerate(loader):
            loss = self._train_step(to_device(batch, self.device), epoch, index)
            bar.update(1)
            if loss is None:
                skipped += 1
                continue
            call_hook(self.task, "on_after_optimizer_step", self.step - 1, total_steps)
            loss_sum += loss.detach().double()
            batches += 1
            for key, value in task_step_metrics(self.task).items():
                sums[key] = sums.get(key, 0.0) + value
            if batches % 10 == 1:  # an .item() syncs with the GPU: not every step
                shown = {k: v / batches for k, v in sums.items()}
                bar.set_postfix(epoch=epoch + 1, **postfix({"loss": loss, **shown}))
        if self.scheduler is not None and self.scheduler_interval == "epoch":
            self.scheduler.step()
        mean_loss, count, total_skipped, means = reduce_epoch(
            loss_sum, batches, skipped, sums, self.device
        )
        if count == 0:
            raise TrainingDiverged(
                f"training diverged: every batch of epoch {epoch + 1} had a "
                "non-finite loss and was skipped",
                epoch=epoch,
                step=self.step,
                checkpoint_path=self.checkpoint_path,
            )
        entry = {
            "epoch": epoch + 1,
            "loss": mean_loss,
            "lr": float(self.optimizer.param_groups[0]["lr"]),
        }
        if self.on_nonfinite == "skip":
            entry["skipped_steps"] = total_skipped
        entry.update(means)
        entry["seconds"] = time.perf_counter() - start
        # the other ranks wait in C++ while rank 0 evaluates
        with guard.blocking() if self.rank != 0 else contextlib.nullcontext():
            entry.update(
                run_epoch_metrics(
                    self.epoch_metrics, self.task, self.rank, self.world_size
                )
            )
        self.epoch = epoch + 1
        self.history.append(entry)
        bar.set_postfix(postfix({k: v for k, v in entry.items() if k != "seconds"}))

    def _train_step(self, batch: object, epoch: int, index: int) -> Tensor | None:
        if self._buffer_sync is not None:
            self._buffer_sync()
        with autocast(self.precision, self.device):
            loss = self._forward(batch)
        if not all_finite(loss, self.world_size):
            if self.on_nonfinite == "raise":
                raise loss_diverged(
                    loss,
                    epoch=epoch,
                    batch=index,
                    step=self.step,
                    epochs_done=self.epoch,
                    checkpoint_path=self.checkpoint_path,
                )
            if self.world_size > 1:
                # DDP's reducer expects the backward of every forward it ran
                loss.backward()
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        call_hook(self.task, "on_after_backward", epoch)
        if self.grad_clip_norm is not None:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.task.parameters(), self.grad_clip_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler is not None and self.scheduler_interval == "step":
            self.scheduler.step()
        self.step += 1
        return loss

    def _wrap_for_distributed(self) -> None:
        distributed = self.world_size > 1 and dist.is_initialized()
        built_on = getattr(self._forward, "process_group", None)
        if built_on is not None and not (distributed and built_on is dist.group.WORLD):
            # the group the wrapper was built on is gone (destroyed or replaced
            # by the caller between fits): wrap again on the current one
            self._forward, self._buffer_sync = TaskForward(self.task), None
        if distributed and isinstance(self._forward, TaskForward):
            self._forward, self._buffer_sync = wrap_ddp(
                self._forward,
                self.task,
                self.device,
                broadcast_buffers=self.broadcast_buffers,
                find_unused_parameters=self.find_unused_parameters,
            )

    def _loader(self, data: Dataset | DataLoader) -> DataLoader:
        return build_loader(
            data,
            batch_size=self.batch_size,
            world_size=self.world_size,
            rank=self.rank,
            shuffle=self.shuffle,
            seed=self.seed,
            drop_last=self.drop_last,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )

    # --------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue training (this process's RNG only)."""
        return trainer_state(self)

    def save_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`state_dict` atomically (rank 0 writes; every rank's RNG and
        rank-local state are kept, see :mod:`pynsm.train.ddp`)."""
        write_trainer_checkpoint(self, path)

    def load_checkpoint(
        self, path: str | os.PathLike[str], *, allow_setting_changes: bool = False
    ) -> dict[str, Any]:
        """Restore the state written by :meth:`save_checkpoint`, whole or not at all.

        Every part (model, optimizer class and state, scheduler, scaler, epoch,
        step, history, RNG, metadata) is checked before anything is applied; if a
        part still fails while applying, everything is put back.

        Args:
            path: The checkpoint file.
            allow_setting_changes: Accept a checkpoint written with another
                ``seed``, ``batch_size`` or number of processes.

        Returns:
            The loaded checkpoint dict (with ``"metadata"``).

        Raises:
            FileNotFoundError: no file at ``path``.
            CheckpointError: a one-line reason; model, optimizer and trainer are
                unchanged. :class:`~pynsm.train.ResumeSettingsError` (a subclass)
                when only the settings above differ.
        """
        check_bool("allow_setting_changes", allow_setting_changes)
        return restore_trainer(self, path, allow_setting_changes=allow_setting_changes)
