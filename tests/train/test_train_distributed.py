"""Two gloo processes: the same step as one process; each keeps its own queue."""

from __future__ import annotations

import pytest
import torch
from dist_utils import run_distributed
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pynsm.arch import SimilarityMatching, SupervisedSimilarityMatching
from pynsm.train import CircuitStack, CircuitTask, Trainer

# a hang among the processes fails in two minutes, not pytest-timeout's ten
pytestmark = pytest.mark.timeout(120)


def _setup():
    torch.manual_seed(0)
    circuit = SupervisedSimilarityMatching(
        nn.Conv2d(1, 6, 3), 3, 6, iteration_projection=torch.relu
    )
    g = torch.Generator().manual_seed(5)
    data = TensorDataset(torch.rand(8, 1, 6, 6, generator=g), torch.arange(8) % 3)
    return CircuitTask(circuit, num_classes=3), data


def _train(task, data, batch_size, epochs=1, **settings):
    trainer = Trainer(
        task,
        epochs=epochs,
        **settings,
        batch_size=batch_size,
        shuffle=False,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
        progress=False,
    )
    history = trainer.fit(data)
    return trainer.world_size, history[0]["loss"]


def _step_worker(rank, world_size):
    task, data = _setup()
    world, loss = _train(task, data, batch_size=4)  # 4 per process = 8 in all
    return world, loss, {k: v.clone() for k, v in task.state_dict().items()}


def _layerwise_setup():
    torch.manual_seed(0)
    bottom = SimilarityMatching(
        nn.Conv2d(1, 4, 3, bias=False), 4, iteration_projection=torch.relu
    )
    top = SupervisedSimilarityMatching(nn.Linear(16, 5, bias=False), 3, 5)
    stack = CircuitStack(
        CircuitTask(bottom, feature_pool=_pool2),
        CircuitTask(top, num_classes=3),
        layerwise=(1,),
    )
    g = torch.Generator().manual_seed(6)
    data = TensorDataset(torch.rand(8, 1, 6, 6, generator=g), torch.arange(8) % 3)
    return stack, data


def _pool2(y):
    return nn.functional.avg_pool2d(y, 2).flatten(1)


def _train_layerwise(batch_size):
    stack, data = _layerwise_setup()
    # the resting layer gets no gradient
    _train(stack, data, batch_size, epochs=2, find_unused_parameters=True)
    return {k: v.clone() for k, v in stack.state_dict().items()}


def _worker(rank, world_size, folder):
    # one start-up of the processes for every case here: starting them is the
    # slow part of these tests
    return {
        "layerwise": _train_layerwise(batch_size=4),
        "step": _step_worker(rank, world_size),
        "queue": {
            mark: _queue_run(rank, mark, f"{folder}/{mark}") for mark in (True, False)
        },
    }


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    return run_distributed(_worker, 2, str(folder))


def test_two_process_step_equals_one_process_step(two_processes):
    task, data = _setup()
    _, single_loss = _train(task, data, batch_size=8)  # one step on all 8 samples
    single = task.state_dict()
    results = [by_case["step"] for by_case in two_processes]
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


def test_layerwise_training_is_the_same_on_two_processes(two_processes):
    # greedy layer-wise: the bottom learns in epoch 1, the top in epoch 2, and
    # the layer that rests has no gradient on either process
    single = _train_layerwise(batch_size=8)
    for by_case in two_processes:
        for key, value in single.items():
            torch.testing.assert_close(
                by_case["layerwise"][key], value, rtol=1e-5, atol=1e-6
            )
    fresh, _ = _layerwise_setup()
    for key in (
        "layers.0.circuit.competitor.weight",
        "layers.1.circuit.encoders.0.weight",
    ):
        assert not torch.equal(fresh.state_dict()[key], single[key])


# ------------------------------------------------------- per-process SwaV queues
class _QueueTask(nn.Module):
    """Features of rank-specific data go into a SwaV queue; a buffer is shared."""

    def __init__(self, mark_rank_local: bool) -> None:
        super().__init__()
        from pynsm.ssl.swav_queue import SwaVQueue

        self.linear = nn.Linear(3, 5)
        self.queue = SwaVQueue(queue_length=8, num_queues=2)
        # SwaVQueue is marked per-rank by default; unmarking it shows what DDP's
        # buffer broadcast would otherwise do to it
        self.queue.ddp_rank_local = mark_rank_local
        self.register_buffer("shared", torch.zeros(1))
        self.enqueued: list[torch.Tensor] = []
        self.shared_seen: list[float] = []

    def training_loss(self, batch):
        self.shared_seen.append(float(self.shared))  # what the sync left here
        self.shared += 1 + 10 * torch.distributed.get_rank()
        features = self.linear(batch[0])
        self.queue([features, 2 * features], epoch=0)
        self.enqueued.append(features.detach().clone())
        return features.pow(2).mean()


def _queue_content(task):
    """What each view's queue holds, ``[length, dim]``, read through its public call
    (a push of one more row, after the content was read)."""
    probe = [torch.zeros(1, 5), torch.zeros(1, 5)]
    return task.queue(probe, epoch=10**6)


def _queue_run(rank, mark, folder):
    torch.manual_seed(0)
    task = _QueueTask(mark)
    g = torch.Generator().manual_seed(100 + rank)  # each process its own data
    data = DataLoader(TensorDataset(torch.randn(8, 3, generator=g)), batch_size=4)
    trainer = Trainer(
        task, epochs=1, progress=False, checkpoint_path=f"{folder}/last.pt"
    )
    trainer.fit(data)
    # a fresh process state resumes each rank's own queue
    torch.manual_seed(1)
    fresh = _QueueTask(mark)
    Trainer(fresh, epochs=1, progress=False).load_checkpoint(f"{folder}/last.pt")
    content = _queue_content(task)
    return content, torch.cat(task.enqueued), task.shared_seen, _queue_content(fresh)


def test_each_process_keeps_its_own_queue(two_processes):
    both = [by_case["queue"] for by_case in two_processes]
    results = [by_mark[True] for by_mark in both]
    for banks, enqueued, _, restored in results:
        # 2 steps x 4 rows fill the 8 slots: the queue is exactly what was pushed
        torch.testing.assert_close(banks[0], enqueued, rtol=0, atol=0)
        torch.testing.assert_close(banks[1], 2 * enqueued, rtol=0, atol=0)
        for bank, back in zip(banks, restored):
            assert torch.equal(bank, back)
    assert not torch.equal(results[0][0][0], results[1][0][0])
    # the other buffers are still rank 0's at every forward
    assert results[0][2] == [0.0, 1.0] and results[1][2] == [0.0, 1.0]

    # without the mark, DDP's buffer broadcast gives every process rank 0's queue
    (bank0, _, _, _), (bank1, enqueued1, _, _) = [m[False] for m in both]
    assert not torch.equal(bank1[0], enqueued1)  # rank 1 lost its own features
    assert torch.equal(bank1[0][:4], bank0[0][:4])  # rank 0's first push
