"""Divergence guard, empty data and argument validation of the Trainer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pynsm.train import Trainer, TrainingDiverged, load_checkpoint


class NaNAt(nn.Module):
    """Least squares whose loss is NaN on the calls listed in ``bad`` (0-based)."""

    def __init__(self, bad=()):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3))
        self.bad = set(bad)
        self.calls = 0

    def training_loss(self, batch):
        loss = (batch[0] @ self.w - batch[1]).pow(2).mean()
        call, self.calls = self.calls, self.calls + 1
        return loss * float("nan") if call in self.bad else loss


def _data(n=16):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    return TensorDataset(x, x @ torch.tensor([1.0, -2.0, 0.5]))


def _trainer(task, **kwargs):
    kwargs.setdefault("epochs", 2)
    return Trainer(
        task,
        batch_size=4,
        shuffle=False,
        optimizer=torch.optim.SGD,
        lr=0.1,
        progress=False,
        **kwargs,
    )


def test_nan_loss_raises_before_the_step_and_keeps_the_last_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    reference = NaNAt()
    _trainer(reference, epochs=1).fit(_data())  # 4 good steps = epoch 1
    reference_w = reference.w.detach().clone()

    task = NaNAt(bad={6})  # epoch 2, third batch
    trainer = _trainer(task, checkpoint_path=path)
    with pytest.raises(TrainingDiverged, match="nan at epoch 2, batch 3") as info:
        trainer.fit(_data())
    error = info.value
    assert (error.epoch, error.step, error.checkpoint_path) == (1, 6, str(path))
    assert "\n" not in str(error) and "is kept" in str(error)
    assert trainer.step == 6 and trainer.epoch == 1
    assert torch.isfinite(task.w).all()
    # the checkpoint is the one of epoch 1, with its weights
    saved = load_checkpoint(path)
    assert saved["epoch"] == 1 and len(saved["history"]) == 1
    torch.testing.assert_close(saved["model"]["w"], reference_w, rtol=0, atol=0)
    # the weights are those after 6 good steps (the 7th was not applied)
    again = NaNAt()
    _trainer(again, epochs=2).fit(torch.utils.data.Subset(_data(), range(16)))
    assert not torch.equal(again.w, task.w)  # 8 steps differ from 6
    six = NaNAt()
    trainer6 = _trainer(six, epochs=1)
    trainer6.fit(_data())
    trainer6.epochs = 2
    loader = DataLoader(torch.utils.data.Subset(_data(), range(8)), batch_size=4)
    trainer6.fit(loader)
    assert torch.equal(six.w, task.w)


def test_skip_leaves_the_bad_batch_out():
    task = NaNAt(bad={1, 5})
    history = _trainer(task, on_nonfinite="skip").fit(_data())
    assert [h["skipped_steps"] for h in history] == [1, 1]
    assert all(math.isfinite(h["loss"]) for h in history)
    # identical to training without those two batches
    clean = NaNAt()
    trainer = _trainer(clean, on_nonfinite="skip")
    keep = [0, 2, 3]  # batch indices of each epoch that were used

    class Batches(torch.utils.data.Dataset):
        def __init__(self):
            x, y = _data().tensors
            self.batches = [(x[4 * i : 4 * i + 4], y[4 * i : 4 * i + 4]) for i in keep]

        def __len__(self):
            return len(self.batches)

        def __getitem__(self, i):
            return self.batches[i]

    trainer.fit(DataLoader(Batches(), batch_size=None))
    assert torch.equal(clean.w, task.w)
    assert trainer.step == 6


def test_an_epoch_of_only_bad_batches_raises():
    task = NaNAt(bad=set(range(100)))
    with pytest.raises(TrainingDiverged, match="every batch of epoch 1"):
        _trainer(task, on_nonfinite="skip").fit(_data())


def test_empty_data_is_an_error_not_a_zero_loss(tmp_path):
    empty = TensorDataset(torch.zeros(0, 3), torch.zeros(0))
    trainer = _trainer(NaNAt(), checkpoint_path=tmp_path / "last.pt")
    with pytest.raises(ValueError, match="is empty"):
        trainer.fit(empty)
    with pytest.raises(ValueError, match="is empty"):
        trainer.fit(DataLoader(empty, batch_size=4))
    with pytest.raises(ValueError, match="is empty"):
        _trainer(NaNAt(), drop_last=True).fit(
            TensorDataset(torch.zeros(3, 3), torch.zeros(3))
        )
    assert list(tmp_path.iterdir()) == []  # no checkpoint written


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"lr": float("inf")}, ValueError, "lr"),
        ({"lr": float("nan")}, ValueError, "lr"),
        ({"lr": 0.0}, ValueError, "lr"),
        ({"lr": True}, TypeError, "lr"),
        ({"grad_clip_norm": float("inf")}, ValueError, "grad_clip_norm"),
        ({"grad_clip_norm": 0}, ValueError, "grad_clip_norm"),
        ({"epochs": True}, TypeError, "epochs"),
        ({"batch_size": 2.0}, TypeError, "batch_size"),
        ({"seed": 10**20}, ValueError, "seed"),
        ({"num_workers": -1}, ValueError, "num_workers"),
        ({"on_nonfinite": "ignore"}, ValueError, "on_nonfinite"),
        ({"shuffle": 1}, TypeError, "shuffle"),
        ({"epoch_metrics": 3}, TypeError, "epoch_metrics"),
        ({"checkpoint_metadata": [1]}, TypeError, "checkpoint_metadata"),
        ({"scheduler": 3}, TypeError, "scheduler"),
        ({"optimizer": int}, TypeError, "optimizer"),
    ],
)
def test_numeric_and_other_arguments_are_validated(kwargs, error, match):
    with pytest.raises(error, match=match):
        Trainer(NaNAt(), progress=False, **kwargs)


def test_integral_numpy_and_tensor_arguments_are_accepted():
    trainer = Trainer(
        NaNAt(),
        epochs=np.int64(1),
        batch_size=torch.tensor(4),
        seed=np.int32(3),
        lr=np.float32(0.1),
        progress=False,
    )
    assert (trainer.epochs, trainer.batch_size, trainer.seed) == (1, 4, 3)
    assert type(trainer.epochs) is int


def test_non_finite_weights_are_never_written_over_the_last_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    task = NaNAt()

    def blow_up(step, total_steps):
        if step == 7:  # the last step of epoch 2: its loss was finite
            task.w.data.fill_(float("inf"))

    task.on_after_optimizer_step = blow_up
    trainer = _trainer(task, checkpoint_path=path)
    with pytest.raises(TrainingDiverged, match="'w' is not finite after epoch 2"):
        trainer.fit(_data())
    saved = load_checkpoint(path)
    assert saved["epoch"] == 1 and torch.isfinite(saved["model"]["w"]).all()
