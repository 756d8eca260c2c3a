"""Forward+backward time of the contrastive / redundancy-reduction losses.

Compares pynsm's losses with straightforward implementations of the same formulas
(written below, checked to give the same value) at batch 256, dim 256, and prints
``ours / straightforward`` time ratios (below 1: ours is faster).

Run (optionally with a thread count)::

    PYTHONPATH=. .venv/bin/python tests/benchmarks/bench_losses_contrastive.py 1

Timings are the best of many interleaved calls, measured as CPU time of this
process (one thread by default), so that other jobs on a busy machine inflate
neither side.
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F

from pynsm.losses import (
    BarlowTwinsLoss,
    DCLLoss,
    NTXentLoss,
    VICRegLoss,
)

BATCH, DIM, BANK = 256, 256, 4096
ROUNDS, REPEATS = 8, 10


def naive_ntxent(out0, out1, temperature=0.5):
    """SimCLR eq. 1 as written: exp of similarities, masked sum, log of the ratio."""
    z = F.normalize(torch.cat([out0, out1]), dim=1)
    n = out0.shape[0]
    similarity = torch.exp(z @ z.T / temperature)
    not_self = ~torch.eye(2 * n, dtype=torch.bool)
    denominator = (similarity * not_self).sum(dim=1)
    positive = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    numerator = similarity[torch.arange(2 * n), positive]
    return -torch.log(numerator / denominator).mean()


class NaiveMoCo:
    """MoCo eq. 1 and the queue of its Algorithm 1, as written in the paper."""

    def __init__(self, bank, temperature=0.5):
        self.queue, self.temperature = bank.clone(), temperature

    def __call__(self, out0, out1):
        q, k = F.normalize(out0, dim=1), F.normalize(out1, dim=1)
        positive = torch.exp((q * k).sum(dim=1) / self.temperature)
        negatives = torch.exp(q @ self.queue / self.temperature).sum(dim=1)
        loss = -torch.log(positive / (positive + negatives)).mean()
        # enqueue the keys, dequeue the oldest
        self.queue = torch.cat([self.queue[:, k.shape[0] :], k.detach().T], dim=1)
        return loss


def naive_dcl(out0, out1, temperature=0.1):
    """DCL eq. 6 as written: exp, mask self and positive, log of the sums."""
    u, v = F.normalize(out0, dim=1), F.normalize(out1, dim=1)
    n = u.shape[0]
    keep = ~torch.eye(n, dtype=torch.bool)
    total = 0
    for a, b in ((u, v), (v, u)):
        same = torch.exp(a @ a.T / temperature) * keep
        other = torch.exp(a @ b.T / temperature) * keep
        positive = (a * b).sum(dim=1) / temperature
        total = total + (-positive + torch.log(same.sum(1) + other.sum(1))).mean()
    return total / 2


def naive_vicreg(z_a, z_b, lam=25.0, mu=25.0, nu=1.0, eps=1e-4):
    """VICReg eq. 1-6 as written, off-diagonal entries picked with a boolean mask."""
    n, d = z_a.shape
    off = ~torch.eye(d, dtype=torch.bool)

    def var(z):
        return F.relu(1 - torch.sqrt(z.var(dim=0) + eps)).mean()

    def cov(z):
        z = z - z.mean(dim=0)
        c = z.T @ z / (n - 1)
        return c[off].pow(2).sum() / d

    return (
        lam * F.mse_loss(z_a, z_b)
        + mu * 0.5 * (var(z_a) + var(z_b))
        + nu * (cov(z_a) + cov(z_b))
    )


def naive_barlow(z_a, z_b, lambda_param=0.005):
    """Barlow Twins Algorithm 1 as written."""
    n, d = z_a.shape
    za = (z_a - z_a.mean(0)) / z_a.std(0)
    zb = (z_b - z_b.mean(0)) / z_b.std(0)
    c = za.T @ zb / n
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = c[~torch.eye(d, dtype=torch.bool)].pow(2).sum()
    return on_diag + lambda_param * off_diag


def time_fwd_bwd(fn, inputs, repeats):
    """Least CPU time of ``repeats`` forward+backward calls."""
    leaves = [x.clone().requires_grad_() for x in inputs]
    fn(*leaves).backward()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        for x in leaves:
            x.grad = None
        start = time.process_time()
        fn(*leaves).backward()
        best = min(best, time.process_time() - start)
    return best


def main() -> None:
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    torch.manual_seed(0)
    out0, out1 = torch.randn(BATCH, DIM), torch.randn(BATCH, DIM)
    moco = NTXentLoss(temperature=0.5, memory_bank_size=BANK)
    with torch.no_grad():
        moco(out0, out1)  # create the bank
    naive_moco = NaiveMoCo(moco.bank.T)  # the paper keeps the queue [dim, size]
    # same value first: each comparison is between two forms of one formula
    checks = [
        (NTXentLoss(temperature=0.5), naive_ntxent),
        (DCLLoss(temperature=0.1), naive_dcl),
        (VICRegLoss(), naive_vicreg),
        (BarlowTwinsLoss(), naive_barlow),
    ]
    for ours, naive in checks:
        a, b = ours(out0.double(), out1.double()), naive(out0.double(), out1.double())
        assert torch.allclose(a, b, rtol=1e-9), (a.item(), b.item())
    with torch.no_grad():
        assert torch.allclose(
            moco(out0, out1), NaiveMoCo(moco.bank.T)(out0, out1), rtol=1e-5
        )

    cases = [
        ("NT-Xent", NTXentLoss(temperature=0.5), naive_ntxent),
        (f"NT-Xent + bank {BANK}", moco, naive_moco),
        ("DCL", DCLLoss(temperature=0.1), naive_dcl),
        ("VICReg", VICRegLoss(), naive_vicreg),
        ("Barlow Twins", BarlowTwinsLoss(), naive_barlow),
    ]
    print(
        f"forward+backward, batch {BATCH}, dim {DIM}, float32, "
        f"{torch.get_num_threads()} thread(s), CPU time, best of {ROUNDS} x {REPEATS}"
    )
    print(f"{'loss':22s} {'ours ms':>9s} {'naive ms':>9s} {'ratio':>7s}")
    for name, ours, naive in cases:
        # interleave the two in rounds so both see the same machine load
        t_ours = t_naive = float("inf")
        for _ in range(ROUNDS):
            t_ours = min(t_ours, time_fwd_bwd(ours, [out0, out1], REPEATS))
            t_naive = min(t_naive, time_fwd_bwd(naive, [out0, out1], REPEATS))
        print(
            f"{name:22s} {1e3 * t_ours:9.3f} {1e3 * t_naive:9.3f} "
            f"{t_ours / t_naive:7.2f}"
        )


if __name__ == "__main__":
    main()
