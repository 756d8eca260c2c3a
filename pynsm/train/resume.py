"""A Trainer's checkpoint: its content, writing it, restoring it whole or not at all.

The functions here work on anything with a trainer's attributes
(:class:`Resumable`), so that this module does not import the trainer that
imports it.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn

from pynsm.train.checkpoint import load_checkpoint, save_checkpoint
from pynsm.train.ddp import rank_local_prefixes, rank_local_state
from pynsm.train.errors import CheckpointError, ResumeSettingsError
from pynsm.train.rng import get_rng_state, set_rng_state
from pynsm.train.state import qualified_name, validate_training_state

__all__ = [
    "Resumable",
    "trainer_state",
    "write_trainer_checkpoint",
    "restore_trainer",
    "check_same_settings",
    "DATA_ORDER_SETTINGS",
]

#: The settings that decide which samples each step sees: a resume must keep them.
DATA_ORDER_SETTINGS = ("seed", "batch_size", "world_size")


class Resumable(Protocol):
    """What a checkpoint is made of and restored into (a
    :class:`~pynsm.train.Trainer` is one)."""

    task: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    device: torch.device
    epoch: int
    step: int
    epochs: int
    seed: int
    batch_size: int
    world_size: int
    rank: int
    history: list[dict[str, float]]
    checkpoint_metadata: dict[str, Any] | None


def trainer_state(trainer: Resumable) -> dict[str, Any]:
    """Everything needed to continue training (this process's RNG only)."""
    scheduler, scaler = trainer.scheduler, trainer.scaler
    return {
        "model": trainer.task.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "optimizer_class": qualified_name(trainer.optimizer),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "scheduler_class": None if scheduler is None else qualified_name(scheduler),
        "scaler": None if scaler is None else scaler.state_dict(),
        "epoch": trainer.epoch,
        "step": trainer.step,
        "epochs": trainer.epochs,
        "seed": trainer.seed,
        "batch_size": trainer.batch_size,
        "world_size": trainer.world_size,
        "history": [dict(entry) for entry in trainer.history],
        "rng": [get_rng_state()],
        "metadata": dict(trainer.checkpoint_metadata or {}),
    }


def write_trainer_checkpoint(trainer: Resumable, path: str | os.PathLike[str]) -> None:
    """Rank 0 writes :func:`trainer_state`, with every rank's RNG and rank-local
    state (see :mod:`pynsm.train.ddp`); all ranks wait until the file exists."""
    state = trainer_state(trainer)
    gathered = trainer.world_size > 1 and dist.is_initialized()
    if gathered:
        local = rank_local_state(trainer.task, rank_local_prefixes(trainer.task))
        local = {k: v.cpu() if isinstance(v, Tensor) else v for k, v in local.items()}
        parts: list[Any] = [None] * trainer.world_size
        dist.all_gather_object(parts, (state["rng"][0], local))
        state["rng"] = [rng for rng, _ in parts]
        if any(rank_local for _, rank_local in parts):
            state["rank_local"] = [rank_local for _, rank_local in parts]
    if trainer.rank == 0:
        save_checkpoint(state, path)
    if gathered:
        dist.barrier()


def restore_trainer(
    trainer: Resumable,
    path: str | os.PathLike[str],
    *,
    allow_setting_changes: bool = False,
) -> dict[str, Any]:
    """Load ``path`` into ``trainer``: all parts, or none (see
    :meth:`pynsm.train.Trainer.load_checkpoint`)."""
    where = repr(os.fspath(path))
    state = load_checkpoint(path, map_location=trainer.device)
    validate_training_state(
        state,
        task=trainer.task,
        optimizer=trainer.optimizer,
        scheduler=trainer.scheduler,
        scaler=trainer.scaler,
        rank=trainer.rank,
        where=where,
    )
    if not allow_setting_changes:
        check_same_settings(state, trainer, where)
    model_state = dict(state["model"])
    rank_local = state.get("rank_local")
    if rank_local and len(rank_local) == trainer.world_size:
        model_state.update(rank_local[trainer.rank])
    rng = state["rng"]
    before = _snapshot(trainer)
    try:
        trainer.task.load_state_dict(model_state)
        trainer.optimizer.load_state_dict(state["optimizer"])
        if trainer.scheduler is not None and state.get("scheduler") is not None:
            trainer.scheduler.load_state_dict(state["scheduler"])
        if trainer.scaler is not None and state.get("scaler") is not None:
            trainer.scaler.load_state_dict(state["scaler"])
        set_rng_state(rng[trainer.rank] if len(rng) > trainer.rank else rng[0])
    except Exception as exc:  # whatever a part objects to: put everything back
        _restore(trainer, before)
        text = str(exc).strip()
        reason = text.splitlines()[0] if text else type(exc).__name__
        raise CheckpointError(f"{where} does not fit this trainer: {reason}") from exc
    trainer.epoch = state["epoch"]
    trainer.step = state["step"]
    trainer.history = [dict(entry) for entry in state.get("history", [])]
    if trainer.checkpoint_metadata is None and state["metadata"]:
        trainer.checkpoint_metadata = dict(state["metadata"])
    return state


def check_same_settings(state: dict[str, Any], trainer: Resumable, where: str) -> None:
    """Raise :class:`ResumeSettingsError` if the checkpoint was written with
    other :data:`DATA_ORDER_SETTINGS` than ``trainer`` has (a setting that an
    older checkpoint does not record is not compared)."""
    differ = {
        name: (state[name], getattr(trainer, name))
        for name in DATA_ORDER_SETTINGS
        if name in state and state[name] != getattr(trainer, name)
    }
    if differ:
        saved = ", ".join(f"{name}={old}" for name, (old, _) in differ.items())
        now = ", ".join(f"{name}={new}" for name, (_, new) in differ.items())
        raise ResumeSettingsError(
            f"{where} was written with {saved}, this run has {now}: resuming would "
            "change the data order; resume with the checkpoint's settings, or pass "
            "allow_setting_changes=True to continue anyway",
            settings=differ,
        )


def _snapshot(trainer: Resumable) -> dict[str, Any]:
    return {
        "model": {
            k: v.detach().clone() if isinstance(v, Tensor) else copy.deepcopy(v)
            for k, v in trainer.task.state_dict().items()
        },
        "optimizer": copy.deepcopy(trainer.optimizer.state_dict()),
        "scheduler": None
        if trainer.scheduler is None
        else copy.deepcopy(trainer.scheduler.state_dict()),
        "scaler": None if trainer.scaler is None else trainer.scaler.state_dict(),
        "rng": get_rng_state(),
    }


def _restore(trainer: Resumable, snapshot: dict[str, Any]) -> None:
    trainer.task.load_state_dict(snapshot["model"])
    trainer.optimizer.load_state_dict(snapshot["optimizer"])
    if trainer.scheduler is not None:
        trainer.scheduler.load_state_dict(snapshot["scheduler"])
    if trainer.scaler is not None:
        trainer.scaler.load_state_dict(snapshot["scaler"])
    set_rng_state(snapshot["rng"])
