"""Clustering losses on 2 gloo processes with B/2 samples each equal one process on B.

With gathering on, Sinkhorn codes are identical row for row; the mean of the
per-process SwaV and MSN (regulariser off, as the regulariser is per process by
design) losses equals the single-process loss, and each process's input gradient,
averaged the way DDP averages, equals the matching rows of the single-process
gradient. DINO's centre is averaged over processes.
"""

import pytest
import torch
from dist_utils import run_distributed

from pynsm.losses import DINOLoss, MSNLoss, SwaVLoss, sinkhorn_msn, sinkhorn_swav

WORLD_SIZE = 2
B, K, D = 8, 6, 5


def _inputs():
    g = torch.Generator().manual_seed(1)
    return {
        "scores": torch.randn(B, K, generator=g) * 5,
        "probs": torch.softmax(torch.randn(B, K, generator=g) * 3, dim=1),
        "high": [torch.randn(B, K, generator=g) for _ in range(2)],
        "low": [torch.randn(B, K, generator=g) for _ in range(3)],
        "queue": [torch.randn(4, K, generator=g) for _ in range(2)],
        "anchors": [torch.randn(B, D, generator=g) for _ in range(2)],  # 2 views
        "targets": torch.randn(B, D, generator=g),
        "prototypes": torch.randn(K, D, generator=g),
        "teacher": [torch.randn(B, K, generator=g) for _ in range(2)],
        "student": [torch.randn(B, K, generator=g) for _ in range(3)],
    }


def _rows(t, rank, world):
    n = t.shape[0] // world
    return t[rank * n : (rank + 1) * n]


def _evaluate(data, rank, world, gather):
    """Codes, losses and input gradients on this process's share of the batch."""
    out = {
        "swav_codes": sinkhorn_swav(
            _rows(data["scores"], rank, world),
            epsilon=0.05,
            gather_distributed=gather,
        ),
        "msn_codes": sinkhorn_msn(
            _rows(data["probs"], rank, world), iterations=4, gather_distributed=gather
        ),
    }
    for use_queue in (False, True):
        crops = [
            _rows(c, rank, world).requires_grad_(True)
            for c in data["high"] + data["low"]
        ]
        queue = [_rows(q, rank, world) for q in data["queue"]] if use_queue else None
        loss = SwaVLoss(sinkhorn_gather_distributed=gather)(crops[:2], crops[2:], queue)
        loss.backward()
        out[f"swav_loss_{use_queue}"] = loss.detach()
        out[f"swav_grads_{use_queue}"] = [c.grad for c in crops]

    views = [_rows(a, rank, world).requires_grad_(True) for a in data["anchors"]]
    prototypes = data["prototypes"].clone().requires_grad_(True)
    loss = MSNLoss(regularization_weight=0.0, gather_distributed=gather)(
        torch.cat(views), _rows(data["targets"], rank, world), prototypes
    )
    loss.backward()
    out.update(
        msn_loss=loss.detach(),
        msn_grads=[v.grad for v in views],
        msn_proto_grad=prototypes.grad,
    )

    dino = DINOLoss(output_dim=K)
    out["dino_loss"] = dino(
        [_rows(t, rank, world) for t in data["teacher"]],
        [_rows(s, rank, world) for s in data["student"]],
        epoch=0,
    )
    out["dino_center"] = dino.center.clone()
    return out


def _worker(rank, world_size, data):
    return _evaluate(data, rank, world_size, gather=True)


@pytest.fixture(scope="module")
def results():
    data = _inputs()
    single = _evaluate(data, 0, 1, gather=True)  # no process group: one process
    per_rank = run_distributed(_worker, WORLD_SIZE, data)
    return single, per_rank


def _cat(per_rank, key, index=None):
    parts = [r[key] if index is None else r[key][index] for r in per_rank]
    return torch.cat(parts)


def test_sinkhorn_codes_identical(results):
    single, per_rank = results
    for key in ("swav_codes", "msn_codes"):
        torch.testing.assert_close(_cat(per_rank, key), single[key])


@pytest.mark.parametrize("use_queue", [False, True])
def test_swav_loss_and_gradients(results, use_queue):
    single, per_rank = results
    losses = torch.stack([r[f"swav_loss_{use_queue}"] for r in per_rank])
    torch.testing.assert_close(losses.mean(), single[f"swav_loss_{use_queue}"])
    for i in range(5):
        # d mean_r(loss_r) / d x_r = grad_r / world_size
        grad = _cat(per_rank, f"swav_grads_{use_queue}", i) / WORLD_SIZE
        torch.testing.assert_close(grad, single[f"swav_grads_{use_queue}"][i])


def test_msn_without_regulariser(results):
    single, per_rank = results
    losses = torch.stack([r["msn_loss"] for r in per_rank])
    torch.testing.assert_close(losses.mean(), single["msn_loss"])
    for i in range(2):
        grad = _cat(per_rank, "msn_grads", i) / WORLD_SIZE
        torch.testing.assert_close(grad, single["msn_grads"][i])
    proto = torch.stack([r["msn_proto_grad"] for r in per_rank]).mean(dim=0)
    torch.testing.assert_close(proto, single["msn_proto_grad"])


def test_dino_center_is_averaged_over_processes(results):
    single, per_rank = results
    for r in per_rank:
        torch.testing.assert_close(r["dino_center"], single["dino_center"])
    losses = torch.stack([r["dino_loss"] for r in per_rank])
    torch.testing.assert_close(losses.mean(), single["dino_loss"])


def test_gathering_changes_the_codes():
    # guards the test above: without gathering, the per-process codes differ
    data = _inputs()
    halves = torch.cat(
        [
            sinkhorn_swav(_rows(data["scores"], r, WORLD_SIZE), epsilon=0.05)
            for r in range(WORLD_SIZE)
        ]
    )
    assert not torch.allclose(halves, sinkhorn_swav(data["scores"], epsilon=0.05))
