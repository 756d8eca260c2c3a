"""Trainer: the task contract, history, exact resume, hooks and validation."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pynsm.arch import SupervisedSimilarityMatching
from pynsm.train import CircuitTask, Trainer


class NoisyRegression(nn.Module):
    """A task whose loss uses dropout and random noise (so RNG state matters)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.3), nn.Linear(8, 1))
        self.calls: list[tuple] = []

    def training_loss(self, batch):
        x, target = batch
        noisy = x + 0.1 * torch.randn_like(x)
        return ((self.net(noisy).squeeze(1) - target) ** 2).mean()

    def on_epoch_start(self, epoch, num_epochs):
        self.calls.append(("epoch", epoch, num_epochs))

    def on_after_backward(self, epoch):
        assert all(p.grad is not None for p in self.parameters())
        self.calls.append(("backward", epoch))

    def on_after_optimizer_step(self, step, total_steps):
        self.calls.append(("step", step, total_steps))


def _data(n: int = 40) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 5, generator=g)
    return TensorDataset(x, x.sum(1) + 0.1 * torch.randn(n, generator=g))


def _trainer(task, tmp_path, epochs):
    return Trainer(
        task,
        epochs=epochs,
        batch_size=8,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
        scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, 1, gamma=0.7),
        checkpoint_path=tmp_path / "last.pt",
        progress=False,
        seed=3,
    )


def test_resume_is_bit_identical(tmp_path):
    torch.manual_seed(0)
    straight = NoisyRegression()
    history = _trainer(straight, tmp_path / "a", 4).fit(_data())

    torch.manual_seed(0)
    first = NoisyRegression()
    _trainer(first, tmp_path / "b", 2).fit(_data())
    # an unrelated process state in between: the checkpoint must restore everything
    torch.manual_seed(123)
    torch.randn(17)
    resumed = NoisyRegression()  # different init, overwritten by the checkpoint
    resumed_history = _trainer(resumed, tmp_path / "b", 4).fit(_data(), resume=True)

    for (name, a), (_, b) in zip(
        straight.state_dict().items(), resumed.state_dict().items()
    ):
        assert torch.equal(a, b), name
    assert [h["loss"] for h in history] == [h["loss"] for h in resumed_history]
    assert [h["lr"] for h in history] == pytest.approx(
        [0.05 * 0.7**k for k in (1, 2, 3, 4)]
    )


def test_hooks_history_and_steps(tmp_path):
    task = NoisyRegression()
    trainer = Trainer(task, epochs=2, batch_size=16, progress=False)
    history = trainer.fit(_data(40))  # 3 batches per epoch (16, 16, 8)
    assert [h["epoch"] for h in history] == [1, 2]
    assert trainer.step == 6 and trainer.epoch == 2
    expected = []
    for epoch in range(2):
        expected.append(("epoch", epoch, 2))
        for i in range(3):
            expected += [("backward", epoch), ("step", 3 * epoch + i, 6)]
    assert task.calls == expected


class ConstantLoss(nn.Module):
    """Loss = w * mean(x): the epoch mean is known in closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def training_loss(self, batch):
        return self.w.detach() * batch[0].mean() + 0 * self.w


def test_history_loss_is_mean_of_batch_losses():
    x = torch.arange(10.0).unsqueeze(1)
    trainer = Trainer(
        ConstantLoss(), epochs=1, batch_size=4, shuffle=False, progress=False
    )
    (entry,) = trainer.fit(TensorDataset(x))
    assert entry["loss"] == pytest.approx((1.5 + 5.5 + 8.5) / 3)
    assert entry["seconds"] >= 0 and entry["lr"] == 0.01


def test_accepts_a_dataloader_and_clips_gradients():
    task = NoisyRegression()
    loader = DataLoader(_data(), batch_size=10)
    norms = []
    task.on_after_optimizer_step = lambda step, total: norms.append(
        torch.linalg.vector_norm(
            torch.cat([p.grad.flatten() for p in task.parameters()])
        ).item()
    )
    Trainer(task, epochs=1, grad_clip_norm=1e-3, progress=False).fit(loader)
    assert len(norms) == 4 and max(norms) <= 1e-3 * (1 + 1e-5)


def test_circuit_task_training_loss_matches_the_circuit():
    torch.manual_seed(0)
    circuit = SupervisedSimilarityMatching(nn.Conv2d(1, 4, 3), 3, 4)
    task = CircuitTask(circuit, num_classes=3)
    x, labels = torch.rand(6, 1, 5, 5), torch.tensor([0, 1, 2, 2, 1, 0])
    onehot = nn.functional.one_hot(labels, 3).float()
    expected = circuit.loss(x, onehot, circuit(x, onehot))
    assert torch.allclose(task.training_loss((x, labels)), expected)
    task.feature_pool = lambda y: y.amax((2, 3))
    assert torch.equal(task.embed(x), circuit(x).amax((2, 3)))
    with pytest.raises(ValueError, match="labels"):
        task.training_loss((x, torch.tensor([0, 1, 2, 3, 0, 0])))
    with pytest.raises(ValueError, match="num_classes"):
        CircuitTask(circuit, num_classes=0)
    with pytest.raises(TypeError, match="loss"):
        CircuitTask(nn.Linear(2, 2))


def test_circuit_trains_and_loss_changes():
    torch.manual_seed(0)
    task = CircuitTask(SupervisedSimilarityMatching(nn.Linear(6, 4), 2, 4), 2)
    before = {k: v.clone() for k, v in task.state_dict().items()}
    x = torch.randn(32, 6)
    data = TensorDataset(x, (x[:, 0] > 0).long())
    Trainer(task, epochs=2, batch_size=8, progress=False).fit(data)
    after = task.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"epochs": -1}, ValueError, "epochs"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"epochs": 1.5}, TypeError, "epochs"),
        ({"lr": -0.1}, ValueError, "lr"),
        ({"mixed_precision": "fp8"}, ValueError, "mixed_precision"),
        ({"mixed_precision": "fp16", "device": "cpu"}, ValueError, "CUDA"),
        ({"scheduler_interval": "batch"}, ValueError, "scheduler_interval"),
        ({"optimizer": 3}, TypeError, "optimizer"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        Trainer(NoisyRegression(), **kwargs)


def test_bad_task_and_data():
    with pytest.raises(TypeError, match="training_loss"):
        Trainer(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="Dataset"):
        Trainer(NoisyRegression(), progress=False).fit([1, 2, 3])
    with pytest.raises(ValueError, match="checkpoint_path"):
        Trainer(NoisyRegression(), progress=False).fit(_data(), resume=True)
    with pytest.raises(FileNotFoundError):
        Trainer(NoisyRegression(), progress=False).fit(_data(), resume="/nonexistent")


class _DtypeProbe(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.dtypes: list[torch.dtype] = []

    def training_loss(self, batch):
        out = self.linear(batch[0])
        self.dtypes.append(out.dtype)
        return out.float().pow(2).mean()


@pytest.mark.parametrize(
    ("precision", "dtype"), [("auto", torch.float32), ("bf16", torch.bfloat16)]
)
def test_mixed_precision_autocasts_the_loss_computation(precision, dtype):
    task = _DtypeProbe()
    trainer = Trainer(
        task,
        epochs=1,
        batch_size=4,
        device="cpu",
        mixed_precision=precision,
        progress=False,
    )
    trainer.fit(TensorDataset(torch.randn(8, 4)))
    assert task.dtypes == [dtype, dtype]  # "auto" keeps float32 on the CPU
    assert task.linear.weight.dtype == torch.float32  # master weights stay fp32


def test_a_device_this_torch_does_not_have_is_a_value_error(monkeypatch):
    # pretend a CPU-only torch (as here) even on a machine with CUDA
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ValueError, match=r"device='cuda' is not available.*'cpu'"):
        Trainer(NoisyRegression(), device="cuda")
    with pytest.raises(ValueError, match=r"device='gpu' is not a device name"):
        Trainer(NoisyRegression(), device="gpu")


def test_a_cuda_index_that_does_not_exist_is_a_value_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    task = NoisyRegression()
    with pytest.raises(ValueError, match=r"'cuda:2'.* 2 CUDA device\(s\), cuda:0 to"):
        Trainer(task, device="cuda:2")
    assert all(p.device.type == "cpu" for p in task.parameters())  # left as it was
