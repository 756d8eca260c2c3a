"""The Lightning adapter trains a circuit and SwaV through ``lightning.Trainer``."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pynsm.arch import SimilarityMatching
from pynsm.losses import SwaVLoss
from pynsm.ssl import SwaV
from pynsm.train import CircuitTask

lightning = pytest.importorskip("lightning")
from pynsm.train.lightning import to_lightning  # noqa: E402


def _fit(module, loader, max_steps):
    trainer = lightning.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader)
    return trainer


def test_circuit_through_lightning_matches_manual_sgd():
    torch.manual_seed(0)
    task = CircuitTask(SimilarityMatching(nn.Linear(6, 3), 3))
    manual = CircuitTask(SimilarityMatching(nn.Linear(6, 3), 3))
    manual.load_state_dict(task.state_dict())
    x = torch.randn(24, 6)
    loader = DataLoader(TensorDataset(x), batch_size=8, shuffle=False)
    _fit(to_lightning(task, lr=0.05), loader, max_steps=3)

    optimizer = torch.optim.SGD(manual.parameters(), lr=0.05)
    for (batch,) in loader:
        optimizer.zero_grad()
        manual.training_loss((batch,)).backward()
        optimizer.step()
    for key, value in manual.state_dict().items():
        torch.testing.assert_close(task.state_dict()[key], value)


def test_swav_through_lightning_calls_the_hooks():
    torch.manual_seed(0)
    model = SwaV(
        in_channels=1,
        image_size=8,
        n_epochs_frozen_prototypes=1,
        criterion=SwaVLoss(),
    )
    steps = []
    original = model.on_after_optimizer_step

    def record(step, total_steps):
        steps.append((step, total_steps))
        original(step, total_steps)

    model.on_after_optimizer_step = record
    prototypes_before = model.prototypes.heads[0].weight.detach().clone()
    backbone_before = [p.detach().clone() for p in model.backbone.parameters()]
    loader = DataLoader(
        TensorDataset(torch.rand(48, 1, 8, 8), torch.zeros(48, dtype=torch.long)),
        batch_size=16,
    )
    trainer = _fit(
        to_lightning(model, optimizer=torch.optim.Adam, lr=1e-3), loader, max_steps=3
    )
    assert trainer.global_step == 3
    assert steps == [(0, 3), (1, 3), (2, 3)]
    # epoch 0: prototypes frozen (only re-normalised); backbone trained
    weight = model.prototypes.heads[0].weight.detach()
    torch.testing.assert_close(weight.norm(dim=1), torch.ones(len(weight)))
    torch.testing.assert_close(
        weight, nn.functional.normalize(prototypes_before, dim=1)
    )
    assert any(
        not torch.equal(a, b)
        for a, b in zip(backbone_before, model.backbone.parameters())
    )


def test_lightning_shares_validation_and_logs_step_metrics():
    with pytest.raises(ValueError, match="lr"):
        to_lightning(CircuitTask(SimilarityMatching(nn.Linear(6, 3), 3)), lr=-1.0)
    torch.manual_seed(0)
    module = to_lightning(CircuitTask(SimilarityMatching(nn.Linear(6, 3), 3)))
    loader = DataLoader(TensorDataset(torch.randn(16, 6)), batch_size=8)
    trainer = _fit(module, loader, max_steps=2)
    assert "residual" in trainer.callback_metrics  # CircuitTask.step_metrics()
    assert float(trainer.callback_metrics["residual"]) >= 0


def test_a_layerwise_stack_learns_layer_by_layer_through_lightning():
    from pynsm.arch import SupervisedSimilarityMatching
    from pynsm.train import CircuitStack

    torch.manual_seed(0)
    bottom = SimilarityMatching(nn.Linear(6, 4), 4, iteration_projection=torch.relu)
    top = SupervisedSimilarityMatching(nn.Linear(4, 3), 2, 3)
    stack = CircuitStack(
        CircuitTask(bottom), CircuitTask(top, num_classes=2), layerwise=(1,)
    )
    x, labels = torch.randn(16, 6), torch.arange(16) % 2
    loader = DataLoader(TensorDataset(x, labels), batch_size=8, shuffle=False)
    before = {k: v.clone() for k, v in stack.state_dict().items()}
    trainer = lightning.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with pytest.raises(ValueError, match="num_epochs must be more than that"):
        trainer.fit(to_lightning(stack, lr=0.05), loader)  # no epoch for the top
    _fit(to_lightning(stack, lr=0.05), loader, max_steps=2)  # epoch 0 only
    moved = {k for k, v in stack.state_dict().items() if not torch.equal(v, before[k])}
    assert moved and all(k.startswith("layers.0.") for k in moved)
