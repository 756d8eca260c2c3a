"""Step and epoch metrics: averaged into the history, never disturbing training."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from pynsm.arch import SimilarityMatching, SupervisedSimilarityMatching
from pynsm.train import CircuitTask, Trainer
from pynsm.train.task import fixed_point_residual


class Noisy(nn.Module):
    """Dropout and noise in the loss: any change of the RNG changes the weights."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 1))
        self.seen = []

    def training_loss(self, batch):
        x = batch[0] + 0.1 * torch.randn_like(batch[0])
        return self.net(x).pow(2).mean()

    def step_metrics(self):
        value = float(len(self.seen) + 1)  # 1, 2, 3, ...: known epoch means
        self.seen.append(value)
        return {"count": value, "twice": torch.tensor(2 * value)}


def _metrics(task):
    # consumes random numbers and runs dropout layers: must change nothing
    assert not task.training and not torch.is_grad_enabled()
    noise = torch.randn(100).sum()
    out = task.net(torch.randn(3, 4))
    return {"noise": noise, "out": out.mean().item(), "n": 3}


def _fit(tmp_path, epochs, metrics, resume=False):
    torch.manual_seed(0)
    task = Noisy()
    trainer = Trainer(
        task,
        epochs=epochs,
        batch_size=4,
        progress=False,
        checkpoint_path=tmp_path / "last.pt",
        epoch_metrics=metrics,
    )
    data = TensorDataset(torch.randn(12, 4, generator=torch.Generator().manual_seed(2)))
    return task, trainer, trainer.fit(data, resume=resume)


def test_epoch_metrics_do_not_change_training_and_resume_stays_exact(tmp_path):
    plain, _, plain_history = _fit(tmp_path / "a", 3, None)
    with_metrics, _, history = _fit(tmp_path / "b", 3, _metrics)
    _fit(tmp_path / "c", 1, _metrics)
    resumed, _, resumed_history = _fit(tmp_path / "c", 3, _metrics, resume=True)
    for key, value in plain.state_dict().items():
        assert torch.equal(value, with_metrics.state_dict()[key]), key
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert [h["loss"] for h in history] == [h["loss"] for h in plain_history]

    # the task's own step counter restarts with the process: compare the rest
    def comparable(h):
        return {k: v for k, v in h.items() if k not in ("seconds", "count", "twice")}

    assert [comparable(h) for h in history] == [comparable(h) for h in resumed_history]
    assert {"noise", "out", "n"} <= set(history[0]) and history[0]["n"] == 3.0
    assert with_metrics.training  # train mode back after the metrics


def test_train_modes_are_restored_one_by_one(tmp_path):
    torch.manual_seed(0)
    task = Noisy()
    task.net[1].eval()  # a user's choice: this dropout stays off
    modes = []

    def probe(t):
        modes.append([m.training for m in t.modules()])
        return {}

    trainer = Trainer(task, epochs=1, batch_size=4, progress=False, epoch_metrics=probe)
    trainer.fit(TensorDataset(torch.randn(8, 4)))
    assert modes == [[False] * 5]
    assert [m.training for m in task.modules()] == [True, True, True, True, True]


def test_step_metrics_are_averaged_per_epoch():
    task = Noisy()
    history = Trainer(task, epochs=2, batch_size=4, progress=False).fit(
        TensorDataset(torch.randn(12, 4))
    )  # 3 steps per epoch: counts 1..3 then 4..6
    assert [h["count"] for h in history] == [2.0, 5.0]
    assert [h["twice"] for h in history] == [4.0, 10.0]


def test_metric_names_may_not_hide_history_fields():
    with pytest.raises(ValueError, match="'loss' is a history field"):
        Trainer(
            Noisy(),
            epochs=1,
            batch_size=4,
            progress=False,
            epoch_metrics=lambda t: {"loss": 1.0},
        ).fit(TensorDataset(torch.randn(4, 4)))
    with pytest.raises(TypeError, match="epoch_metrics"):
        Trainer(
            Noisy(),
            epochs=1,
            batch_size=4,
            progress=False,
            epoch_metrics=lambda t: [1.0],
        ).fit(TensorDataset(torch.randn(4, 4)))


def _residual_by_hand(circuit, x, y):
    b = circuit.encoder(x).detach()
    step = y - circuit.it_optim_kwargs["lr"] * (y @ circuit.competitor.weight.T - b)
    step = torch.relu(step)
    return ((y - step).norm() / y.norm()).item()


@pytest.mark.parametrize("iterations", [1, 3, 200])
def test_circuit_residual_is_the_relative_fixed_point_residual(iterations):
    torch.manual_seed(0)
    circuit = SimilarityMatching(
        nn.Linear(6, 4),
        4,
        iteration_projection=torch.relu,
        max_iterations=iterations,
        iteration_lr=0.2,
    )
    with torch.no_grad():
        circuit.competitor.weight.add_(0.1 * torch.randn(4, 4)).copy_(
            (circuit.competitor.weight + circuit.competitor.weight.T) / 2
        )
    task = CircuitTask(circuit)
    x = torch.randn(16, 6)
    assert task.step_metrics() == {}
    task.training_loss((x,))
    residual = task.step_metrics()["residual"]
    expected = _residual_by_hand(circuit, x, circuit(x))
    assert residual.item() == pytest.approx(expected, rel=1e-4, abs=1e-7)
    if iterations == 200:
        assert residual < 1e-5  # converged: at the fixed point
    else:
        assert residual > 1e-3


def test_supervised_residual_includes_the_label_drive_and_shows_in_history():
    torch.manual_seed(0)
    circuit = SupervisedSimilarityMatching(
        nn.Conv2d(1, 3, 3), 2, 3, max_iterations=300, iteration_lr=0.3
    )
    x, labels = torch.rand(4, 1, 5, 5), torch.tensor([0, 1, 1, 0])
    onehot = nn.functional.one_hot(labels, 2).float()
    y = circuit(x, onehot)
    encodings = [circuit.encoders[0](x), circuit.encoders[1](onehot)]
    assert fixed_point_residual(circuit, y, encodings) < 1e-4
    assert fixed_point_residual(circuit, y, encodings[:1]) > 1e-2  # labels matter
    task = CircuitTask(circuit, num_classes=2)
    history = Trainer(task, epochs=1, batch_size=2, progress=False).fit(
        TensorDataset(x, labels)
    )
    assert 0 <= history[0]["residual"] < 1e-3
