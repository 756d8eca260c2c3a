"""Speed of the circuits against pynsm 1.0.1, side by side, on 2 threads.

Run from the repository root:

    .venv/bin/python tests/benchmarks/bench_circuits.py [--repeat N] [--threads T]

pynsm 1.0.1 runs in a second process (see `tests/peer.py`); both sides build the same
circuits with the same code. Measurements are interleaved -- one peer run, one run
of ours, one run of the floor, and again -- so that both see the same machine load,
and each figure is the best of `--repeat` runs (the one least disturbed by other
processes). The "floor" is a bare loop of the very matmuls and ReLUs the iteration
needs (encoder, then 39 x addmm or baddbmm + relu_ on the whole batch): forward /
floor says how close the fused forward is to the arithmetic it cannot avoid (below 1
means the cache blocking of the fused loop beats the naive loop). Speed-ups are given
in wall-clock time and in process CPU time (the latter is less disturbed when other
processes compete for the cores).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from peer import PEER_DIR, start_peer  # noqa: E402

THREADS = 2

TIMING_SOURCE = '''
import time

import torch
from torch import nn

import pynsm

# calls per timing sample: enough for each sample to last tens of milliseconds
BURST = {"dense B=256 Linear(784,100)": 20, "conv B=128 Conv2d(1,50,6)": 1}
CONFIGS = {
    # name: (encoder factory, input shape, out_channels)
    "dense B=256 Linear(784,100)": (lambda: nn.Linear(784, 100), (256, 784), 100),
    "conv B=128 Conv2d(1,50,6)": (lambda: nn.Conv2d(1, 50, 6), (128, 1, 28, 28), 50),
}
MEASURES = ("forward", "train_step")


def make_circuit(name):
    factory, shape, out = CONFIGS[name]
    torch.manual_seed(0)
    circuit = pynsm.SimilarityMatching(
        factory(), out, iteration_projection=torch.relu, max_iterations=40
    )
    return circuit, torch.randn(shape)


def prepare():
    """Return {(configuration, measure): function to time}."""
    jobs = {}
    for name in CONFIGS:
        circuit, x = make_circuit(name)
        optimizer = torch.optim.SGD(circuit.parameters(), lr=1e-4)

        def forward(circuit=circuit, x=x):
            circuit(x)

        def train_step(circuit=circuit, x=x, optimizer=optimizer):
            y = circuit(x)
            loss = circuit.loss(x, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        jobs[name, "forward"] = forward
        jobs[name, "train_step"] = train_step
    return jobs


def time_once(fn, number=1):
    """Wall-clock and process CPU seconds per call, over `number` calls in a row.

    A burst of calls, rather than one, keeps millisecond-sized jobs from being timed
    only cold (threads waking up, caches empty) after the pause between samples.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(number):
        fn()
    return (time.perf_counter() - wall) / number, (time.process_time() - cpu) / number
'''

# the peer answers one timing per line it reads: "configuration|measure"
SERVER_SOURCE = """
import sys

JOBS = prepare()
for line in sys.stdin:
    name, measure, number = line.rstrip("\\n").split("|")
    print(*time_once(JOBS[name, measure], int(number)), flush=True)
"""


def make_floors(namespace: dict) -> dict:
    """Bare loops of the unavoidable arithmetic, per configuration."""
    floors = {}
    for name in namespace["CONFIGS"]:
        circuit, x = namespace["make_circuit"](name)
        encoder, weight = circuit.encoder, circuit.competitor.weight

        @torch.no_grad()
        def bare_loop(encoder=encoder, weight=weight, x=x):
            # y <- relu(b + (I - M) y): rows for dense, [C, C] x [C, S] per sample
            b = encoder(x)
            channels = b.shape[1]
            step = torch.eye(channels) - weight
            y = torch.relu(b)
            y_next = torch.empty_like(y)
            if b.ndim == 2:
                for _ in range(39):
                    torch.addmm(b, y, step.t(), out=y_next)
                    y_next.relu_()
                    y, y_next = y_next, y
                return y
            b, y, y_next = (t.view(len(x), channels, -1) for t in (b, y, y_next))
            steps = step.expand(len(x), channels, channels)
            for _ in range(39):
                torch.baddbmm(b, steps, y, out=y_next)
                y_next.relu_()
                y, y_next = y_next, y
            return y

        floors[name] = bare_loop
    return floors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--threads", type=int, default=THREADS)
    args = parser.parse_args()
    if not (PEER_DIR / "pynsm").is_dir():
        sys.exit(f"pynsm 1.0.1 not found in {PEER_DIR}: run tests/fetch_peer.sh")

    torch.set_num_threads(args.threads)
    namespace: dict = {}
    exec(TIMING_SOURCE, namespace)
    ours_jobs = namespace["prepare"]()
    floors = make_floors(namespace)
    time_once = namespace["time_once"]

    peer = start_peer(TIMING_SOURCE + SERVER_SOURCE, threads=args.threads)
    best: dict = {}

    def record(key, seconds):
        wall, cpu = best.get(key, (float("inf"), float("inf")))
        best[key] = (min(wall, seconds[0]), min(cpu, seconds[1]))

    try:
        for rep in range(args.repeat + 1):  # the first round warms up
            for name, measure in ours_jobs:
                time.sleep(0.05)  # let the other side's threads go idle first
                number = namespace["BURST"][name]
                peer.stdin.write(f"{name}|{measure}|{number}\n")
                peer.stdin.flush()
                theirs = tuple(map(float, peer.stdout.readline().split()))
                time.sleep(0.05)
                mine = time_once(ours_jobs[name, measure], number)
                floor = None
                if measure == "forward":
                    floor = time_once(floors[name], number)
                if rep == 0:
                    continue
                record(("peer", name, measure), theirs)
                record(("ours", name, measure), mine)
                if floor is not None:
                    record(("floor", name), floor)
    finally:
        peer.stdin.close()
        peer.wait()

    print(
        f"torch {torch.__version__}, {args.threads} threads, 40 iterations, ReLU, "
        f"best of {args.repeat} samples (bursts of calls, per-call times)"
    )
    header = (
        f"{'configuration':28s} {'measure':10s} {'pynsm 1.0.1':>11s} {'ours':>9s} "
        f"{'speed-up':>8s} {'cpu-time':>8s} {'ours/floor':>10s}"
    )
    print(header)
    print("-" * len(header))
    for name in namespace["CONFIGS"]:
        floor = best["floor", name]
        for measure in namespace["MEASURES"]:
            theirs, mine = best["peer", name, measure], best["ours", name, measure]
            ratio = f"{mine[0] / floor[0]:9.2f}x" if measure == "forward" else ""
            print(
                f"{name:28s} {measure:10s} {theirs[0] * 1e3:9.1f}ms "
                f"{mine[0] * 1e3:7.1f}ms {theirs[0] / mine[0]:7.2f}x "
                f"{theirs[1] / mine[1]:7.2f}x {ratio:>10s}"
            )
        print(f"{'':28s} {'floor':10s} {'':11s} {floor[0] * 1e3:7.1f}ms")


if __name__ == "__main__":
    main()
