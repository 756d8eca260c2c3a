"""Checkpoints: atomic writes, weights-only loading, clear errors."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from pynsm.arch import SimilarityMatching
from pynsm.train import (
    CheckpointError,
    CircuitTask,
    Trainer,
    load_checkpoint,
    save_checkpoint,
)


def _trained(tmp_path, epochs=1):
    torch.manual_seed(0)
    task = CircuitTask(SimilarityMatching(nn.Linear(4, 3), 3))
    trainer = Trainer(
        task,
        epochs=epochs,
        batch_size=4,
        checkpoint_path=tmp_path / "last.pt",
        progress=False,
    )
    trainer.fit(TensorDataset(torch.randn(12, 4)))
    return trainer


def test_checkpoint_is_a_weights_only_dict_with_training_state(tmp_path):
    trainer = _trained(tmp_path, epochs=2)
    raw = torch.load(tmp_path / "last.pt", weights_only=True)
    assert {
        "model",
        "optimizer",
        "scheduler",
        "epoch",
        "step",
        "rng",
        "history",
    } <= set(raw)
    assert raw["epoch"] == 2 and raw["step"] == 6 and len(raw["history"]) == 2
    for key, value in trainer.task.state_dict().items():
        assert torch.equal(raw["model"][key], value)
    assert {"python", "numpy", "torch"} <= set(raw["rng"][0])
    assert os.listdir(tmp_path) == ["last.pt"]  # no temporary file left behind


def test_failed_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    trainer = _trained(tmp_path)
    before = load_checkpoint(tmp_path / "last.pt")
    real_save = torch.save

    def broken_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.seek(0)
        f.truncate(100)  # half-written file, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with torch.no_grad():
        for p in trainer.task.parameters():
            p.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint(tmp_path / "last.pt")
    monkeypatch.undo()
    after = load_checkpoint(tmp_path / "last.pt")
    for key, value in before["model"].items():
        assert torch.equal(after["model"][key], value)
    assert os.listdir(tmp_path) == ["last.pt"]


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo owned",))


def test_foreign_and_corrupt_checkpoints_are_clear_errors(tmp_path):
    trainer = _trained(tmp_path)
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Payload()}, evil)
    with pytest.raises(CheckpointError, match="code execution"):
        load_checkpoint(evil)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(corrupt)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((tmp_path / "last.pt").read_bytes()[:200])
    with pytest.raises(CheckpointError):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {"w": torch.ones(1)}}, foreign)  # loadable, not ours
    with pytest.raises(CheckpointError, match="not a pynsm training checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
    # a pynsm checkpoint of another model does not fit this trainer
    save_checkpoint(
        {
            "model": {"w": torch.ones(1)},
            "optimizer": {},
            "epoch": 1,
            "step": 1,
            "rng": [],
        },
        tmp_path / "other.pt",
    )
    with pytest.raises(CheckpointError, match="does not fit"):
        trainer.load_checkpoint(tmp_path / "other.pt")


def test_checkpoint_that_fits_the_model_but_not_the_optimizer_changes_nothing(
    tmp_path,
):
    trainer = _trained(tmp_path)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    state["model"] = {k: v + 1.0 for k, v in state["model"].items()}  # fits the model
    state["optimizer"]["param_groups"] = []  # but not the optimizer
    save_checkpoint(state, tmp_path / "half.pt")
    before = {k: v.clone() for k, v in trainer.task.state_dict().items()}
    with pytest.raises(CheckpointError, match="does not fit"):
        trainer.load_checkpoint(tmp_path / "half.pt")
    for key, value in trainer.task.state_dict().items():
        assert torch.equal(value, before[key]), key
