"""One training loop for circuits and self-supervised models."""

from __future__ import annotations

import contextlib
import copy
import inspect
import os
import time
from collections.abc import Iterable
from typing import Any, Callable, Union

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from pynsm import distributed
from pynsm.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pynsm.train.launch import default_device, init_distributed_from_env
from pynsm.train.rng import get_rng_state, set_rng_state
from pynsm.train.task import TaskForward, check_task

__all__ = ["Trainer"]

OptimizerSpec = Union[
    torch.optim.Optimizer, Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
]
SchedulerSpec = Union[Any, Callable[[torch.optim.Optimizer], Any]]
_PRECISIONS = ("auto", "bf16", "fp16", "off")


class Trainer:
    """Trains a *task*: any ``nn.Module`` with ``training_loss(batch) -> Tensor``.

    The task contract (all hooks optional):

    * ``training_loss(batch)``: scalar loss of one DataLoader batch;
    * ``on_epoch_start(epoch, num_epochs)``: before the first batch of each epoch;
    * ``on_after_backward(epoch)``: after the (synchronised) backward, before
      gradient clipping and the optimizer step;
    * ``on_after_optimizer_step(step, total_steps)``: after each optimizer step
      (``step`` is the 0-based index of the step just taken);
    * ``embed(x)``: features ``[B, D]`` for readouts (not used for training).

    Circuits are adapted with :class:`~pynsm.train.CircuitTask`.

    The trainer owns device placement, the optimizer and scheduler, mixed precision
    on CUDA (bf16, or fp16 with a gradient scaler), gradient clipping, a tqdm
    progress bar, the per-epoch :attr:`history`, atomic checkpoints with exact
    resume, and distributed data parallel training under ``torchrun`` (gloo on the
    CPU, NCCL on CUDA; each process loads its share of every epoch through a
    :class:`~torch.utils.data.DistributedSampler`; only rank 0 shows progress and
    writes checkpoints).

    Args:
        task: The task to train.
        epochs: Total number of epochs (a resumed run continues up to it).
        batch_size: Batch size *per process* when :meth:`fit` gets a dataset.
        optimizer: An optimizer over ``task.parameters()``, an optimizer class, or a
            callable ``params -> optimizer``. Default: SGD.
        lr: Learning rate given to an optimizer class (default 0.01 for the default
            SGD); ignored for instances and other callables.
        scheduler: A learning-rate scheduler instance or a callable
            ``optimizer -> scheduler``.
        scheduler_interval: Step the scheduler every ``"epoch"`` or ``"step"``.
        device: Where to train (default: ``cuda:LOCAL_RANK`` if available, else CPU).
        mixed_precision: ``"auto"`` (bf16 or fp16 on CUDA, off on the CPU),
            ``"bf16"``, ``"fp16"`` (CUDA only, with a ``GradScaler``) or ``"off"``.
        grad_clip_norm: Clip the global gradient norm to this value.
        checkpoint_path: File for the checkpoint written after every epoch.
        seed: Seed of the data order (the sampler shuffles with ``seed + epoch``).
        shuffle: Shuffle the dataset each epoch.
        drop_last: Drop the last incomplete batch.
        num_workers: DataLoader worker processes.
        progress: Show a progress bar (rank 0 only).
        sync_batchnorm: Convert batch norms to ``SyncBatchNorm`` when distributed
            (CUDA only: torch has no CPU kernel for it).
        find_unused_parameters: Passed to ``DistributedDataParallel``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch.utils.data import TensorDataset
        >>> from pynsm.arch import SimilarityMatching
        >>> from pynsm.train import CircuitTask, Trainer
        >>> data = TensorDataset(torch.randn(64, 10))
        >>> task = CircuitTask(SimilarityMatching(nn.Linear(10, 4), 4))
        >>> trainer = Trainer(task, epochs=2, batch_size=16, progress=False)
        >>> history = trainer.fit(data)
        >>> [entry["epoch"] for entry in history]
        [1, 2]
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
    ) -> None:
        self.task = check_task(task)
        self.epochs = _check_int("epochs", epochs, minimum=0)
        self.batch_size = _check_int("batch_size", batch_size, minimum=1)
        self.num_workers = _check_int("num_workers", num_workers, minimum=0)
        self.seed = _check_int("seed", seed, minimum=None)
        if lr is not None and not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        if grad_clip_norm is not None and not grad_clip_norm > 0:
            raise ValueError(f"grad_clip_norm must be positive, got {grad_clip_norm!r}")
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(
                "scheduler_interval must be 'epoch' or 'step', got "
                f"{scheduler_interval!r}"
            )
        self.grad_clip_norm = grad_clip_norm
        self.scheduler_interval = scheduler_interval
        self.checkpoint_path = (
            None if checkpoint_path is None else os.fspath(checkpoint_path)
        )
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.progress = progress

        self._owns_process_group = init_distributed_from_env()
        self.world_size = distributed.world_size()
        self.rank = distributed.rank()
        self.device = torch.device(device) if device is not None else default_device()
        self.precision = _resolve_precision(mixed_precision, self.device)

        if sync_batchnorm and self.world_size > 1:
            if self.device.type != "cuda":
                # torch's SyncBatchNorm has no CPU kernel
                raise ValueError("sync_batchnorm=True needs CUDA devices")
            self.task = nn.SyncBatchNorm.convert_sync_batchnorm(self.task)
        self.task.to(self.device)
        self.optimizer = _make_optimizer(optimizer, self.task, lr)
        self.scheduler = (
            scheduler(self.optimizer)
            if callable(scheduler) and not hasattr(scheduler, "state_dict")
            else scheduler
        )
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        forward = TaskForward(self.task)
        if self.world_size > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            forward = DistributedDataParallel(
                forward,
                device_ids=device_ids,
                find_unused_parameters=find_unused_parameters,
            )
        self._forward = forward

        self.epoch = 0  # completed epochs
        self.step = 0  # optimizer steps taken
        self.history: list[dict[str, float]] = []

    # ------------------------------------------------------------------ training
    def fit(
        self,
        data: Dataset | DataLoader,
        *,
        resume: bool | str | os.PathLike[str] = False,
    ) -> list[dict[str, float]]:
        """Train up to :attr:`epochs` epochs and return the history.

        Args:
            data: A dataset (the trainer builds the loader: per-process batches of
                ``batch_size``, shuffled with ``seed + epoch``) or a ready
                DataLoader (used as given; its sampler's ``set_epoch`` is called).
            resume: ``True`` to continue from :attr:`checkpoint_path`, or a path to
                a checkpoint. Model, optimizer, scheduler, scaler, RNG states,
                epoch, step and history are restored, so the run continues exactly
                as if it had never stopped.

        Returns:
            :attr:`history`: one dict per completed epoch with ``epoch`` (1-based),
            ``loss`` (mean training loss over the epoch and all processes),
            ``seconds`` and ``lr``.

        Raises:
            FileNotFoundError: ``resume`` asks for a checkpoint that does not exist.
            CheckpointError: the checkpoint is corrupt, foreign, or does not fit.
        """
        if resume:
            path = self.checkpoint_path if resume is True else os.fspath(resume)
            if path is None:
                raise ValueError("resume=True needs a checkpoint_path")
            self.load_checkpoint(path)
        loader = self._loader(data)
        steps_per_epoch = len(loader)
        total_steps = self.epochs * steps_per_epoch
        remaining = max(self.epochs - self.epoch, 0) * steps_per_epoch
        bar = tqdm(
            total=remaining,
            disable=not (self.progress and self.rank == 0),
            desc="train",
            unit="batch",
            dynamic_ncols=True,
        )
        try:
            for epoch in range(self.epoch, self.epochs):
                self._train_epoch(loader, epoch, total_steps, bar)
                if self.checkpoint_path is not None:
                    self.save_checkpoint(self.checkpoint_path)
        finally:
            bar.close()
        return self.history

    def _train_epoch(
        self, loader: DataLoader, epoch: int, total_steps: int, bar: tqdm
    ) -> None:
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        _call_hook(self.task, "on_epoch_start", epoch, self.epochs)
        self.task.train()
        start = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        batches = 0
        for batch in loader:
            loss = self._train_step(_to_device(batch, self.device), epoch)
            _call_hook(self.task, "on_after_optimizer_step", self.step - 1, total_steps)
            loss_sum += loss.detach().double()
            batches += 1
            bar.update(1)
            if batches % 10 == 1:  # an .item() syncs with the GPU: not every step
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4g}")
        if self.scheduler is not None and self.scheduler_interval == "epoch":
            self.scheduler.step()
        totals = torch.stack(
            [loss_sum, torch.tensor(float(batches), device=self.device).double()]
        )
        distributed.all_reduce_sum(totals)
        mean_loss = (totals[0] / totals[1].clamp_min(1)).item()
        self.epoch = epoch + 1
        self.history.append(
            {
                "epoch": self.epoch,
                "loss": mean_loss,
                "seconds": time.perf_counter() - start,
                "lr": float(self.optimizer.param_groups[0]["lr"]),
            }
        )
        bar.set_postfix(epoch=self.epoch, loss=f"{mean_loss:.4g}")

    def _train_step(self, batch: object, epoch: int) -> Tensor:
        with self._autocast():
            loss = self._forward(batch)
        if not isinstance(loss, Tensor) or loss.dim() != 0:
            raise TypeError("training_loss(batch) must return a scalar tensor")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        _call_hook(self.task, "on_after_backward", epoch)
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

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "off":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _loader(self, data: Dataset | DataLoader) -> DataLoader:
        if isinstance(data, DataLoader):
            return data
        if not isinstance(data, Dataset):
            raise TypeError(
                f"data must be a Dataset or a DataLoader, got {type(data).__name__}"
            )
        if len(data) == 0:  # type: ignore[arg-type]
            raise ValueError("data is an empty dataset")
        # a DistributedSampler also on one process: its order depends only on
        # (seed, epoch), which is what makes resuming exact
        sampler = DistributedSampler(
            data,
            num_replicas=self.world_size,
            rank=self.rank,
            shuffle=self.shuffle,
            seed=self.seed,
            drop_last=self.drop_last,
        )
        return DataLoader(
            data,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=self.drop_last,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )

    # --------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue training (this process's RNG only)."""
        return {
            "model": self.task.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None
            if self.scheduler is None
            else self.scheduler.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "epochs": self.epochs,
            "seed": self.seed,
            "world_size": self.world_size,
            "history": [dict(entry) for entry in self.history],
            "rng": [get_rng_state()],
        }

    def save_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`state_dict` atomically (rank 0 writes; all ranks' RNG kept)."""
        state = self.state_dict()
        if self.world_size > 1:
            states: list[Any] = [None] * self.world_size
            dist.all_gather_object(states, state["rng"][0])
            state["rng"] = states
        if self.rank == 0:
            save_checkpoint(state, path)
        if self.world_size > 1:
            dist.barrier()  # nobody moves on before the file exists

    def load_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Restore the state written by :meth:`save_checkpoint`."""
        state = load_checkpoint(path, map_location=self.device)
        missing = {"model", "optimizer", "epoch", "step", "rng"} - set(state)
        if missing:
            raise CheckpointError(
                f"{os.fspath(path)!r} lacks training state: {sorted(missing)}"
            )
        # a checkpoint that fits the model but not the optimizer must not leave
        # the model half-restored
        model_before = copy.deepcopy(self.task.state_dict())
        try:
            self.task.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and state.get("scheduler") is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            if self.scaler is not None and state.get("scaler") is not None:
                self.scaler.load_state_dict(state["scaler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            self.task.load_state_dict(model_before)
            first_line = str(exc).strip().splitlines()[0]
            raise CheckpointError(
                f"{os.fspath(path)!r} does not fit this model/optimizer: {first_line}"
            ) from exc
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
        self.history = [dict(entry) for entry in state.get("history", [])]
        rng_states = state["rng"]
        set_rng_state(
            rng_states[self.rank] if len(rng_states) > self.rank else rng_states[0]
        )


def _make_optimizer(
    spec: OptimizerSpec | None, task: nn.Module, lr: float | None
) -> torch.optim.Optimizer:
    params = [p for p in task.parameters() if p.requires_grad]
    if spec is None:
        return torch.optim.SGD(params, lr=0.01 if lr is None else lr)
    if isinstance(spec, torch.optim.Optimizer):
        return spec
    if inspect.isclass(spec) and issubclass(spec, torch.optim.Optimizer):
        return spec(params) if lr is None else spec(params, lr=lr)
    if callable(spec):
        optimizer = spec(params)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError("optimizer callable must return a torch.optim.Optimizer")
        return optimizer
    raise TypeError(
        "optimizer must be a torch.optim.Optimizer, an optimizer class or a callable "
        f"params -> optimizer, got {type(spec).__name__}"
    )


def _resolve_precision(value: str | bool | None, device: torch.device) -> str:
    if value is None or value is False:
        return "off"
    if value is True:
        value = "auto"
    if value not in _PRECISIONS:
        raise ValueError(f"mixed_precision must be one of {_PRECISIONS}, got {value!r}")
    if value == "auto":
        if device.type != "cuda":
            return "off"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if value == "fp16" and device.type != "cuda":
        raise ValueError("mixed_precision='fp16' needs a CUDA device")
    return value


def _check_int(name: str, value: object, minimum: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _call_hook(task: nn.Module, name: str, *args: object) -> None:
    hook = getattr(task, name, None)
    if callable(hook):
        hook(*args)


def _to_device(batch: object, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(item, device) for item in batch)
    if isinstance(batch, dict):
        return {key: _to_device(item, device) for key, item in batch.items()}
    return batch
