"""Two gloo processes train exactly like one process on the combined batch."""

from __future__ import annotations

import torch
from dist_utils import run_distributed
from torch import nn
from torch.utils.data import TensorDataset

from pynsm.arch import SupervisedSimilarityMatching
from pynsm.train import CircuitTask, Trainer


def _setup():
    torch.manual_seed(0)
    circuit = SupervisedSimilarityMatching(
        nn.Conv2d(1, 6, 3), 3, 6, iteration_projection=torch.relu
    )
    g = torch.Generator().manual_seed(5)
    data = TensorDataset(torch.rand(8, 1, 6, 6, generator=g), torch.arange(8) % 3)
    return CircuitTask(circuit, num_classes=3), data


def _train(task, data, batch_size):
    trainer = Trainer(
        task,
        epochs=1,
        batch_size=batch_size,
        shuffle=False,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
        progress=False,
    )
    history = trainer.fit(data)
    return trainer.world_size, history[0]["loss"]


def _worker(rank, world_size):
    task, data = _setup()
    world, loss = _train(task, data, batch_size=4)  # 4 per process = 8 in all
    return world, loss, {k: v.clone() for k, v in task.state_dict().items()}


def test_two_process_step_equals_one_process_step():
    task, data = _setup()
    _, single_loss = _train(task, data, batch_size=8)  # one step on all 8 samples
    single = task.state_dict()
    results = run_distributed(_worker, 2)
    for world, loss, state in results:
        assert world == 2
        assert abs(loss - single_loss) < 1e-5  # mean of the two halves' losses
        for key, value in single.items():
            torch.testing.assert_close(state[key], value, rtol=1e-5, atol=1e-6)
    # the step did something: the weights moved from their initial values
    fresh, _ = _setup()
    assert not torch.allclose(
        fresh.state_dict()["circuit.encoders.0.weight"],
        single["circuit.encoders.0.weight"],
    )
