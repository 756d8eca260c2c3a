"""Forward+backward time of the clustering losses (MSN, PMSN, SwaV, DINO).

Compares pynsm's losses with straightforward implementations of the same formulas
(written below as the papers state them, in linear space; checked to give the same
value) at batch 256, dim 256, 1024 prototypes, and prints ``ours / straightforward``
time ratios (below 1: ours is faster).

Run (optionally with a thread count)::

    PYTHONPATH=. .venv/bin/python tests/benchmarks/bench_losses_clustering.py 1

Timings are the best of interleaved calls, measured as CPU time of this process, so
other jobs on a busy machine inflate neither side.
"""

from __future__ import annotations

import math
import sys
import time

import torch
import torch.nn.functional as F

from pynsm.losses import DINOLoss, MSNLoss, PMSNLoss, SwaVLoss

BATCH, DIM, PROTOTYPES = 256, 256, 1024
ANCHOR_VIEWS = 2  # MSN: anchor views per target
HIGH, LOW = 2, 6  # SwaV multi-crop: 2 global + 6 local crops
DINO_DIM = 4096
ROUNDS, REPEATS = 5, 5


def naive_sinkhorn(weights, iterations=3):
    """Sinkhorn-Knopp of SwaV Alg. 1 / MSN, linear space."""
    q = weights.T
    k, b = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).T


def naive_msn(
    anchors, targets, prototypes, temperature=0.1, sharpen_t=0.25, prior=None
):
    """MSN eq. 1-2 (ME-MAX) or the PMSN KL prior, as written."""
    views = anchors.shape[0] // targets.shape[0]
    a = F.normalize(anchors, dim=1)
    t = F.normalize(targets, dim=1)
    c = F.normalize(prototypes, dim=1)
    p_anchor = torch.softmax(a @ c.T / temperature, dim=1)
    with torch.no_grad():
        p_target = torch.softmax(t @ c.T / temperature, dim=1) ** (1 / sharpen_t)
        p_target = p_target / p_target.sum(dim=1, keepdim=True)
        p_target = naive_sinkhorn(p_target).repeat(views, 1)
    loss = torch.mean(torch.sum(torch.log(p_anchor ** (-p_target)), dim=1))
    mean = p_anchor.mean(dim=0)
    if prior is None:
        reg = -torch.sum(torch.log(mean ** (-mean))) + math.log(mean.shape[0])
    else:
        reg = torch.sum(prior * (torch.log(prior) - torch.log(mean)))
    return loss + reg


def naive_swav(high, low, temperature=0.1, epsilon=0.05):
    """SwaV eq. 1-3: codes per high-resolution crop, every other crop predicts them."""
    crops = high + low
    total = 0
    for i, scores in enumerate(high):
        with torch.no_grad():
            q = naive_sinkhorn(torch.exp(scores.detach() / epsilon))
        per_crop = 0
        for v, z in enumerate(crops):
            if v != i:
                log_p = torch.log(torch.softmax(z / temperature, dim=1))
                per_crop = per_crop - (q * log_p).sum(dim=1).mean()
        total = total + per_crop / (len(crops) - 1)
    return total / len(high)


def naive_dino(teacher, student, center, teacher_temp=0.04, student_temp=0.1):
    """DINO Alg. 1: cross entropy over every pair of different views."""
    total, terms = 0, 0
    for t, t_out in enumerate(teacher):
        p_t = torch.softmax((t_out - center) / teacher_temp, dim=-1)
        for s, s_out in enumerate(student):
            if s != t:
                p_s = torch.softmax(s_out / student_temp, dim=-1)
                total = total - (p_t * torch.log(p_s)).sum(dim=-1).mean()
                terms += 1
    return total / terms


def _best_cpu_time(fn, leaves):
    best = math.inf
    for _ in range(REPEATS):
        for x in leaves:
            x.grad = None
        start = time.process_time()
        fn().backward()
        best = min(best, time.process_time() - start)
    return best


def compare(name, ours, naive, leaves):
    value_ours, value_naive = ours().item(), naive().item()
    assert math.isclose(value_ours, value_naive, rel_tol=1e-4), (
        value_ours,
        value_naive,
    )
    t_ours = t_naive = math.inf
    for _ in range(ROUNDS):  # interleave so that load changes hit both sides
        t_ours = min(t_ours, _best_cpu_time(ours, leaves))
        t_naive = min(t_naive, _best_cpu_time(naive, leaves))
    print(
        f"{name:<44} ours {t_ours * 1e3:8.2f} ms   straightforward "
        f"{t_naive * 1e3:8.2f} ms   ratio {t_ours / t_naive:5.2f}"
    )
    return t_ours / t_naive


def main() -> None:
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    torch.manual_seed(0)
    print(
        f"threads={torch.get_num_threads()} batch={BATCH} dim={DIM} "
        f"prototypes={PROTOTYPES}"
    )
    ratios = {}

    anchors = torch.randn(ANCHOR_VIEWS * BATCH, DIM, requires_grad=True)
    targets = torch.randn(BATCH, DIM)
    prototypes = torch.randn(PROTOTYPES, DIM, requires_grad=True)
    msn, pmsn = MSNLoss(), PMSNLoss()
    prior = torch.arange(1, PROTOTYPES + 1, dtype=torch.float32) ** -0.25
    prior = prior / prior.sum()
    ratios["MSN"] = compare(
        f"MSNLoss ({ANCHOR_VIEWS} anchor views)",
        lambda: msn(anchors, targets, prototypes),
        lambda: naive_msn(anchors, targets, prototypes),
        [anchors, prototypes],
    )
    ratios["PMSN"] = compare(
        "PMSNLoss (power law)",
        lambda: pmsn(anchors, targets, prototypes),
        lambda: naive_msn(anchors, targets, prototypes, prior=prior),
        [anchors, prototypes],
    )

    # SwaV scores are cosine similarities of features and prototypes (in [-1, 1]);
    # the straightforward exp(score / epsilon) would overflow for unnormalised ones
    unit_prototypes = F.normalize(torch.randn(PROTOTYPES, DIM), dim=1)
    crops = [
        (F.normalize(torch.randn(BATCH, DIM), dim=1) @ unit_prototypes.T)
        .detach()
        .requires_grad_(True)
        for _ in range(HIGH + LOW)
    ]
    swav = SwaVLoss()
    ratios["SwaV"] = compare(
        f"SwaVLoss ({HIGH} high + {LOW} low crops)",
        lambda: swav(crops[:HIGH], crops[HIGH:]),
        lambda: naive_swav(crops[:HIGH], crops[HIGH:]),
        crops,
    )

    teacher = [torch.randn(BATCH, DINO_DIM) for _ in range(2)]
    student = [torch.randn(BATCH, DINO_DIM, requires_grad=True) for _ in range(6)]
    dino = DINOLoss(output_dim=DINO_DIM, center_momentum=1.0)  # centre stays 0
    ratios["DINO"] = compare(
        f"DINOLoss (2 teacher + 6 student views, K={DINO_DIM})",
        lambda: dino(teacher, student, epoch=30),
        lambda: naive_dino(teacher, student, torch.zeros(DINO_DIM)),
        student,
    )
    print(
        "ratios (ours / straightforward):",
        ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()),
    )


if __name__ == "__main__":
    main()
