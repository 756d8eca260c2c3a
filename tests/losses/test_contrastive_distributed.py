"""Gathering across 2 gloo processes equals one process with the whole batch.

Each process gets B/2 samples and computes the loss with ``gather_distributed=True``;
the mean of the per-process losses must equal the single-process loss on all B
samples, and each process's input gradient (which, through the gather, collects the
gradients of every process's loss) divided by the world size must equal the
matching rows of the single-process gradient: what DDP's gradient averaging needs.
"""

import torch
from dist_utils import run_distributed

from pynsm.losses import (
    BarlowTwinsLoss,
    DCLLoss,
    NTXentLoss,
    TiCoLoss,
    VICRegLLoss,
    VICRegLoss,
)

WORLD_SIZE = 2


def _pair_losses(gather):
    return {
        "ntxent": NTXentLoss(temperature=0.3, gather_distributed=gather),
        "dcl": DCLLoss(temperature=0.2, gather_distributed=gather),
        "vicreg": VICRegLoss(gather_distributed=gather),
        "barlow": BarlowTwinsLoss(lambda_param=0.1, gather_distributed=gather),
        "tico": TiCoLoss(gather_distributed=gather),
    }


def _vicregl(views, grids, gather):
    loss_fn = VICRegLLoss(num_matches=(3, 2), gather_distributed=gather)
    return loss_fn(views[:2], grids[:2], views[2:], grids[2:])


def _evaluate(z_a, z_b, views, grids, gather):
    """Loss values and input gradients of every loss for the given inputs."""
    results = {}
    for name, loss_fn in _pair_losses(gather).items():
        a, b = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
        value = loss_fn(a, b)
        value.backward()
        results[name] = (value.detach(), a.grad, b.grad)
    leaves = [t.clone().requires_grad_() for v in views for t in v]
    pairs = [(leaves[2 * i], leaves[2 * i + 1]) for i in range(len(views))]
    value = _vicregl(pairs, grids, gather)
    value.backward()
    results["vicregl"] = (value.detach(), *[t.grad for t in leaves])
    return results


def _slice(rank, world_size, tensor):
    per = tensor.shape[0] // world_size
    return tensor[rank * per : (rank + 1) * per]


def _body(rank, world_size, z_a, z_b, views, grids):
    torch.set_default_dtype(torch.float64)
    local_views = [tuple(_slice(rank, world_size, t) for t in v) for v in views]
    local_grids = [_slice(rank, world_size, g) for g in grids]
    return _evaluate(
        _slice(rank, world_size, z_a),
        _slice(rank, world_size, z_b),
        local_views,
        local_grids,
        gather=True,
    )


def test_gathered_losses_and_gradients_equal_single_process():
    batch = 8
    z_a = torch.randn(batch, 6, dtype=torch.float64)
    z_b = torch.randn(batch, 6, dtype=torch.float64)
    shapes = [(3, 3), (3, 3), (2, 2)]
    views = [
        (
            torch.randn(batch, 5, dtype=torch.float64),
            torch.randn(batch, h, w, 4, dtype=torch.float64),
        )
        for h, w in shapes
    ]
    grids = [torch.rand(batch, h, w, 2, dtype=torch.float64) for h, w in shapes]
    single = _evaluate(z_a, z_b, views, grids, gather=False)
    per_rank = run_distributed(_body, WORLD_SIZE, z_a, z_b, views, grids)
    for name, (value, *grads) in single.items():
        mean = sum(r[name][0] for r in per_rank) / WORLD_SIZE
        torch.testing.assert_close(mean, value, rtol=1e-10, atol=1e-12, msg=name)
        for index, grad in enumerate(grads):
            gathered = torch.cat([r[name][1 + index] for r in per_rank]) / WORLD_SIZE
            torch.testing.assert_close(
                gathered, grad, rtol=1e-8, atol=1e-12, msg=f"{name} grad {index}"
            )
    # each rank's loss covers only its own anchors, so the agreement is not trivial
    assert not torch.isclose(per_rank[0]["ntxent"][0], single["ntxent"][0])
