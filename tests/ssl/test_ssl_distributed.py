"""Two gloo processes train MSN and SwaV under DistributedDataParallel."""

import pytest
import torch
from dist_utils import run_distributed
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pynsm.ssl.msn import MSN
from pynsm.ssl.swav import SwaV


class _LossForward(nn.Module):
    # what the Trainer does: DDP wraps a module whose forward is training_loss
    def __init__(self, task):
        super().__init__()
        self.task = task

    def forward(self, batch):
        return self.task.training_loss(batch)


def _build(kind):
    torch.manual_seed(0)  # same initial weights on every rank
    if kind == "msn":
        return MSN(embed_dim=16, num_heads=2, projection_hidden_dim=16,
                   projection_dim=8, n_prototypes=8, num_focal_views=1,
                   gather_distributed=True)
    return SwaV(projection_hidden_dim=16, projection_dim=8, n_prototypes=6,
                num_local_crops=1, n_epochs_frozen_prototypes=1,
                sinkhorn_gather_distributed=True)


def _train_both(rank, world_size):
    # one process group for both models: spawning processes is the slow part
    return {kind: _train_two_epochs(kind, rank) for kind in ("msn", "swav")}


def _train_two_epochs(kind, rank):
    model = _build(kind)
    wrapped = DistributedDataParallel(_LossForward(model))
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.1
    )
    torch.manual_seed(100 + rank)  # different data and crops on every rank
    states = []
    for epoch in range(2):
        if hasattr(model, "on_epoch_start"):
            model.on_epoch_start(epoch, 2)
        optimizer.zero_grad()
        wrapped(torch.rand(8, 1, 8, 8)).backward()
        if hasattr(model, "on_after_backward"):
            model.on_after_backward(epoch)
        optimizer.step()
        model.on_after_optimizer_step(epoch, 2)
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    return states


@pytest.fixture(scope="module")
def trained():
    return run_distributed(_train_both, 2)


@pytest.mark.parametrize("kind", ["msn", "swav"])
def test_two_processes_stay_in_sync(kind, trained):
    ranks = [result[kind] for result in trained]
    initial = _build(kind).state_dict()
    for name, value in ranks[0][-1].items():
        if "running" in name or "num_batches" in name:
            continue  # batch-norm statistics are per process (no SyncBatchNorm)
        torch.testing.assert_close(ranks[1][-1][name], value, msg=name)
    changed = [
        name for name, value in ranks[0][-1].items()
        if value.is_floating_point() and not torch.equal(value, initial[name])
    ]
    assert any(name.startswith("backbone.") for name in changed)
    if kind == "msn":
        assert any(name.startswith("target_backbone.") for name in changed)
    else:
        # prototypes frozen in epoch 0 (up to re-normalisation), trained in epoch 1
        key = "prototypes.heads.0.weight"
        torch.testing.assert_close(ranks[0][0][key], initial[key])
        assert not torch.allclose(ranks[0][1][key], initial[key], atol=1e-4)
