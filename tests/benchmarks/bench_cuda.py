"""CUDA figures (issue 16): circuits against pynsm 1.0.1, the two fixed-point
solvers, an exact active-set solve, and the losses against lightly 1.4.26, on one GPU.

A GPU is lent only now and then, for minutes, so the run is prepared here and
sent as one script. Prepare the inputs that need training or MNIST (on the CPU,
into `.bench/cases.pt`, about 10 MB), then run on the GPU machine:

    .venv/bin/python tests/benchmarks/bench_cuda.py --prepare
    python tests/benchmarks/bench_cuda.py --out DIR [--parts circuits,solver,...]

`--device cpu --quick` runs every part on the CPU with few repeats (a check of
the script, not a measurement). Parts:

* **circuits** -- pynsm 1.0.1 (a second process, `.peer/pynsm-1.0.1`) and this
  library on the same circuits, inputs and weights: 40 plain steps, ReLU; forward
  and one training step (forward, loss, backward, SGD). Ours with `M` of
  condition 9 (at init `M = I`, solved by one step), also with
  `solver="accelerated"` at `tol=1e-5` (float32; both residuals reported), and
  the plain forward replayed as a CUDA graph. Small (the CPU table's sizes) and
  large batches. Each figure is the best of `--repeat` bursts of calls, timed
  with a synchronisation at the end of each burst.
* **epoch** -- one epoch of pynsm 1.0.1's conv demo (SGD lr 0.05, batch 100) on
  the first 3,000 MNIST images: pynsm 1.0.1, ours with 40 plain steps, ours
  accelerated (`tol=1e-4`).
* **solver** -- the cases of `bench_fixed_point.py` in float64: gradient given
  just enough steps against accelerated, at residuals 1e-4, 1e-6, 1e-8; and an
  exact solve on each sample's free set (block principal pivoting: batched
  Cholesky factorisations, the step the CPU could not afford), with the time of
  those factorisations alone.
* **losses** -- `bench_losses_lightly.py` on the device, eager and compiled.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "benchmarks")]

from peer import PEER_DIR, start_peer  # noqa: E402

from pynsm.train.task import fixed_point_residual  # noqa: E402

CASES_FILE = ROOT / ".bench" / "cases.pt"
TOLS = (1e-4, 1e-6, 1e-8)
RESULTS: dict = {}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def best_burst(fn, device: str, repeat: int, number: int) -> float:
    """Seconds per call: the best of `repeat` bursts of `number` calls."""
    fn()
    sync(device)
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        sync(device)
        best = min(best, (time.perf_counter() - start) / number)
    return best


# ------------------------------------------------------------------ preparation
def prepare() -> None:
    """Cases that need training or MNIST, built on the CPU (bench_fixed_point)."""
    from bench_fixed_point import case_conv_demo, case_supervised_digits, read_mnist

    torch.set_num_threads(1)
    cases = {
        "(a) supervised-sm, digits": case_supervised_digits(20),
        "(b) conv demo, MNIST": case_conv_demo(3000),
    }
    images, _ = read_mnist("train", 3000)
    blob = {
        "cases": {
            name: (b, weight, projection is not None)
            for name, (b, weight, projection) in cases.items()
        },
        "mnist_3000": (images * 255).to(torch.uint8),
    }
    CASES_FILE.parent.mkdir(exist_ok=True)
    torch.save(blob, CASES_FILE)
    print(f"wrote {CASES_FILE} ({CASES_FILE.stat().st_size / 1e6:.1f} MB)")


# --------------------------------------------------------------------- circuits
# runs on both sides (ours here, pynsm 1.0.1 in the peer process)
TIMING_SOURCE = """
import math
import time

import torch
from torch import nn

import pynsm

DEVICE = {device!r}
CONFIGS = {{
    # name: (encoder factory, input shape, out_channels, calls per burst)
    "dense B=256 Linear(784,100)": (lambda: nn.Linear(784, 100), (256, 784), 100, 20),
    "conv B=128 Conv2d(1,50,6)": (lambda: nn.Conv2d(1, 50, 6), (128, 1, 28, 28), 50, 5),
    "dense B=8192 Linear(784,500)": (lambda: nn.Linear(784, 500), (8192, 784), 500, 5),
    "conv B=1024 Conv2d(1,50,6)":
        (lambda: nn.Conv2d(1, 50, 6), (1024, 1, 28, 28), 50, 2),
}}


def make_circuit(name, **settings):
    factory, shape, out, _ = CONFIGS[name]
    torch.manual_seed(0)
    kwargs = dict(iteration_projection=torch.relu, max_iterations=40)
    kwargs.update(settings)
    circuit = pynsm.SimilarityMatching(factory(), out, **kwargs)
    x = torch.rand(shape)  # non-negative, like images
    return circuit.to(DEVICE), x.to(DEVICE)


def jobs_of(circuit, x):
    optimizer = torch.optim.SGD(circuit.parameters(), lr=1e-4)

    def forward():
        circuit(x)

    def train_step():
        y = circuit(x)
        loss = circuit.loss(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return {{"forward": forward, "train_step": train_step}}


def sync():
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def time_burst(fn, number):
    sync()
    start = time.perf_counter()
    for _ in range(number):
        fn()
    sync()
    return (time.perf_counter() - start) / number
"""

PEER_SERVER = """
import sys

JOBS = {}
for name in CONFIGS:
    JOBS.update({(name, k): v for k, v in jobs_of(*make_circuit(name)).items()})
for line in sys.stdin:
    name, measure, number = line.rstrip("\\n").split("|")
    print(time_burst(JOBS[name, measure], int(number)), flush=True)
"""


def cuda_graph_forward(circuit, x, device):
    """The forward replayed as a CUDA graph (static input and output)."""
    if not device.startswith("cuda"):
        return None
    static_x = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(3):
            circuit(static_x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        static_y = circuit(static_x)
    graph.replay()
    sync(device)
    check = circuit(static_x)
    error = float((static_y - check).abs().max() / check.abs().max().clamp_min(1e-30))
    return graph.replay, error


def spread_competitor(channels: int, device: str) -> torch.Tensor:
    """`Q diag(linspace(0.2, 1.8)) Q^T`: condition 9, centred on 1."""
    generator = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(channels, channels, generator=generator))
    return ((q * torch.linspace(0.2, 1.8, channels)) @ q.T).to(device)


def part_circuits(args) -> None:
    device = args.device
    namespace: dict = {}
    exec(TIMING_SOURCE.format(device=device), namespace)
    configs = namespace["CONFIGS"]
    if args.quick:
        configs = {
            k: v for k, v in configs.items() if k.split()[1] in ("B=256", "B=128")
        }
    peer = start_peer(TIMING_SOURCE.format(device=device) + PEER_SERVER, threads=1)
    rows = []
    try:
        for name, (_, _, _, number) in configs.items():
            plain, x = namespace["make_circuit"](name)
            # at init M = I and one plain step is the fixed point: give ours an M
            # of condition 9 (spectrum [0.2, 1.8]) so that the accelerated solve
            # has work to do; the peer's fixed 40 steps cost the same for any M
            spread = spread_competitor(plain.competitor.weight.shape[0], device)
            with torch.no_grad():
                plain.competitor.weight.copy_(spread)
                y = plain(x)
                reached = float(fixed_point_residual(plain, y, [plain.encoder(x)]))
            fast, _ = namespace["make_circuit"](
                name, solver="accelerated", tol=1e-5, max_iterations=400
            )
            with torch.no_grad():
                fast.competitor.weight.copy_(spread)
            jobs = {
                "gradient": namespace["jobs_of"](plain, x),
                "accelerated": namespace["jobs_of"](fast, x),
            }
            graphed = None
            try:
                graphed = cuda_graph_forward(plain, x, device)
            except Exception as error:  # noqa: BLE001 -- reported, not fatal
                print(f"  CUDA graph of {name}: {type(error).__name__}: {error}")
            best: dict = {}
            for rep in range(args.repeat + 1):
                for measure in ("forward", "train_step"):
                    peer.stdin.write(f"{name}|{measure}|{number}\n")
                    peer.stdin.flush()
                    theirs = float(peer.stdout.readline())
                    times = {"peer": theirs}
                    for solver, solver_jobs in jobs.items():
                        times[solver] = namespace["time_burst"](
                            solver_jobs[measure], number
                        )
                    if measure == "forward" and graphed is not None:
                        times["graph"] = namespace["time_burst"](graphed[0], number)
                    if rep == 0:
                        continue  # warm-up round
                    for key, value in times.items():
                        best[measure, key] = min(
                            best.get((measure, key), math.inf), value
                        )
            with torch.no_grad():
                y_fast = fast(x)
                fast_residual = float(
                    fixed_point_residual(fast, y_fast, [fast.encoder(x)])
                )
            for measure in ("forward", "train_step"):
                row = {
                    "configuration": name,
                    "measure": measure,
                    "peer_ms": best[measure, "peer"] * 1e3,
                    "gradient_ms": best[measure, "gradient"] * 1e3,
                    "accelerated_ms": best[measure, "accelerated"] * 1e3,
                    "graph_ms": best.get((measure, "graph"), math.nan) * 1e3,
                    "residual_40_steps": reached,
                    "accelerated_residual": fast_residual,
                    "accelerated_steps": fast.iteration_idx + 1,
                    "graph_max_rel_error": graphed[1] if graphed else math.nan,
                }
                rows.append(row)
                print(
                    f"{name:30s} {measure:10s} 1.0.1 {row['peer_ms']:8.2f} ms | "
                    f"gradient {row['gradient_ms']:7.2f} ms "
                    f"({row['peer_ms'] / row['gradient_ms']:5.2f}x) | accelerated "
                    f"{row['accelerated_ms']:7.2f} ms "
                    f"({row['peer_ms'] / row['accelerated_ms']:5.2f}x, "
                    f"{row['accelerated_steps']} steps) | graph "
                    f"{row['graph_ms']:7.2f} ms | residual {reached:.1e} / "
                    f"{fast_residual:.1e}",
                    flush=True,
                )
    finally:
        peer.stdin.close()
        peer.wait()
    RESULTS["circuits"] = rows


# ------------------------------------------------------------------------ epoch
# the same source runs under pynsm 1.0.1 and under this library (a subprocess each)
EPOCH_SOURCE = """
import sys
images = torch.load(sys.argv[1])
settings = eval(sys.argv[2])  # {} or this library's solver settings
from pynsm import SimilarityMatching
def epoch():
    torch.manual_seed(0)
    kwargs = dict(tau=0.1, max_iterations=40, iteration_projection=torch.relu)
    kwargs.update(settings)
    circuit = SimilarityMatching(nn.Conv2d(1, 50, 6), 50, **kwargs).to(DEVICE)
    optimizer = torch.optim.SGD(circuit.parameters(), lr=0.05)
    sync()
    start = time.perf_counter()
    for x in images.split(100):
        y = circuit(x)
        loss = circuit.loss(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    sync()
    return time.perf_counter() - start
epoch()  # warm-up
print(min(epoch() for _ in range(REPEAT)))
"""


def part_epoch(args, blob) -> None:
    device = args.device
    images = (blob["mnist_3000"].float() / 255).to(device)
    if args.quick:
        images = images[:500]
    path = ROOT / ".bench" / "epoch_images.pt"
    torch.save(images, path)
    source = TIMING_SOURCE.format(device=device) + EPOCH_SOURCE.replace(
        "REPEAT", str(args.repeat_epoch)
    )

    def epoch_seconds(library: Path, settings: str) -> float:
        env = {**os.environ, "PYTHONPATH": str(library)}
        done = subprocess.run(
            [sys.executable, "-c", source, str(path), settings],
            env=env, capture_output=True, text=True, cwd="/tmp",
        )  # fmt: skip
        if done.returncode != 0:
            print(done.stderr)
        return float(done.stdout.split()[-1])

    peer_s = epoch_seconds(PEER_DIR, "{}")
    gradient_s = epoch_seconds(ROOT, "{}")
    fast_s = epoch_seconds(ROOT, "{'solver': 'accelerated', 'tol': 1e-4}")
    RESULTS["epoch"] = {
        "images": len(images),
        "peer_s": peer_s,
        "gradient_s": gradient_s,
        "accelerated_s": fast_s,
    }
    print(
        f"conv demo epoch ({len(images)} images): 1.0.1 {peer_s:.2f} s, gradient "
        f"{gradient_s:.2f} s ({peer_s / gradient_s:.2f}x), accelerated tol 1e-4 "
        f"{fast_s:.2f} s ({peer_s / fast_s:.2f}x)",
        flush=True,
    )


# ----------------------------------------------------------------------- solver
def principal_pivoting(weight, b, rounds=30):
    """Exact solution of `min 1/2 y^T M y - b^T y, y >= 0` for every column of
    `b` `[N, C]`, by block principal pivoting (Judice & Pires): guess the free
    set, solve the equality-constrained problem on it exactly (a batched Cholesky
    of the masked `M`), move every infeasible coordinate to the other set, repeat.
    Returns the solution and the rounds taken (capped; a column that cycles keeps
    its last iterate)."""
    n, c = b.shape
    eye = torch.eye(c, dtype=b.dtype, device=b.device)
    free = b > 0  # y = P(b) first: the fixed point when M = I
    y = torch.zeros_like(b)
    for round_ in range(1, rounds + 1):
        mask = free.to(b.dtype)
        # M_FF on the free block, the identity on the rest: one SPD system a sample
        system = (
            weight * mask[:, :, None] * mask[:, None, :] + eye * (1 - mask)[:, None]
        )
        factor, _ = torch.linalg.cholesky_ex(system)
        y = torch.cholesky_solve((b * mask)[..., None], factor)[..., 0]
        gradient = y @ weight.T - b
        infeasible = (free & (y < 0)) | (~free & (gradient < 0))
        if not bool(infeasible.any()):
            return y, round_
        free = free ^ infeasible
    return y.clamp_min(0), rounds


def factorisation_time(device, count, size, repeat) -> float:
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(count, size, size, generator=generator, dtype=torch.float64)
    spd = (a @ a.mT / size + torch.eye(size, dtype=torch.float64)).to(device)
    rhs = torch.randn(count, size, 1, dtype=torch.float64).to(device)

    def solve():
        factor, _ = torch.linalg.cholesky_ex(spd)
        torch.cholesky_solve(rhs, factor)

    return best_burst(solve, device, repeat, 5)


def part_solver(args, blob) -> None:
    from bench_fixed_point import (
        case_dense,
        gradient_iterations,
        residual,
        solver_circuit,
        spectrum,
    )

    device = args.device
    cases = {
        name: (b, weight, torch.relu if relu else None)
        for name, (b, weight, relu) in blob["cases"].items()
    }
    cases |= {
        "(c) dense, condition 9": case_dense(0.2, 1.8, False),
        "(c) dense, condition 9, ReLU": case_dense(0.2, 1.8, True),
        "(c) dense, condition 40": case_dense(0.045, 1.8, False),
        "(c) dense, condition 40, ReLU": case_dense(0.045, 1.8, True),
    }
    rows = []
    for name, (b, weight, projection) in cases.items():
        b, weight = b.to(device), weight.to(device)
        print(f"{name}: b {tuple(b.shape)}, {spectrum(weight.cpu())}", flush=True)
        needed = gradient_iterations(b, weight, projection, TOLS, device=device)
        for tol in TOLS:
            plain = solver_circuit(
                weight, projection, "gradient", 0.0, needed[tol], device
            )
            fast = solver_circuit(weight, projection, "accelerated", tol, 20000, device)
            times = {"gradient": math.inf, "accelerated": math.inf}
            for _ in range(args.repeat):
                for key, circuit in (("gradient", plain), ("accelerated", fast)):
                    times[key] = min(
                        times[key],
                        best_burst(lambda c=circuit, b=b: c(b), device, 1, 3),
                    )
            row = {
                "case": name,
                "tol": tol,
                "gradient_steps": needed[tol],
                "gradient_ms": times["gradient"] * 1e3,
                "gradient_residual": residual(plain, plain(b), b),
                "accelerated_steps": None,
                "accelerated_ms": times["accelerated"] * 1e3,
                "accelerated_residual": residual(fast, fast(b), b),
            }
            row["accelerated_steps"] = fast.iteration_idx + 1
            rows.append(row)
            print(
                f"  {tol:.0e}: gradient {row['gradient_steps']} steps "
                f"{row['gradient_ms']:.2f} ms | accelerated {row['accelerated_steps']} "
                f"steps {row['accelerated_ms']:.2f} ms | "
                f"{row['gradient_ms'] / row['accelerated_ms']:.1f}x | residuals "
                f"{row['gradient_residual']:.1e} / {row['accelerated_residual']:.1e}",
                flush=True,
            )
        if projection is not None:
            # the exact free-set solve, per sample (per pixel for the conv case)
            flat = b.movedim(1, -1).reshape(-1, b.shape[1]) if b.ndim > 2 else b
            y, rounds = principal_pivoting(weight, flat)
            y_shaped = (
                y.reshape(b.movedim(1, -1).shape).movedim(-1, 1) if b.ndim > 2 else y
            )
            plain = solver_circuit(weight, projection, "gradient", 0.0, 1, device)
            exact_residual = residual(plain, y_shaped, b)
            exact_s = best_burst(
                lambda w=weight, f=flat: principal_pivoting(w, f),
                device,
                args.repeat,
                3,
            )
            factor_s = factorisation_time(
                device, flat.shape[0], flat.shape[1], args.repeat
            )
            target = next(r for r in rows if r["case"] == name and r["tol"] == 1e-6)
            rows.append(
                {
                    "case": name,
                    "exact_rounds": rounds,
                    "exact_ms": exact_s * 1e3,
                    "exact_residual": exact_residual,
                    "factorisations_ms": factor_s * 1e3,
                    "systems": list(flat.shape),
                }
            )
            speedup = target["gradient_ms"] / (exact_s * 1e3)
            print(
                f"  exact free-set solve: {rounds} rounds, {exact_s * 1e3:.2f} ms, "
                f"residual {exact_residual:.1e} ({speedup:.1f}x "
                f"gradient at 1e-6); one batched Cholesky + solve of "
                f"{flat.shape[0]} x {flat.shape[1]}^2: {factor_s * 1e3:.2f} ms",
                flush=True,
            )
    ratios = [
        r["gradient_ms"] / r["accelerated_ms"] for r in rows if r.get("tol") == 1e-6
    ]
    geometric = math.exp(sum(map(math.log, ratios)) / len(ratios))
    print(
        f"at 1e-6: smallest speed-up {min(ratios):.2f}x, "
        f"geometric mean {geometric:.2f}x"
    )
    RESULTS["solver"] = rows


# ----------------------------------------------------------------------- losses
COMPILED_LOSSES = "MSN,PMSN,SwaV,NTXent (SimCLR),BarlowTwins,VICReg"


def part_losses(args) -> None:
    script = ROOT / "tests" / "benchmarks" / "bench_losses_lightly.py"
    rounds = "2" if args.quick else "5"
    for compiled in (False, True):
        command = [sys.executable, str(script), "1", rounds, "--device", args.device]
        if compiled:
            command.append("--compile")
        if args.quick:
            command += ["--cases", "MSN,SwaV,NTXent (SimCLR)"]
        elif compiled:  # compiling every case on both sides takes minutes
            command += ["--cases", COMPILED_LOSSES]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        print(done.stdout + done.stderr[-3000:], flush=True)
        RESULTS[f"losses{'_compiled' if compiled else ''}"] = {
            "stdout": done.stdout,
            "seconds": time.perf_counter() - start,
            "returncode": done.returncode,
        }


# ------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepare", action="store_true")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--parts", default="solver,circuits,epoch,losses")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--repeat-epoch", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.prepare:
        prepare()
        return
    if args.quick:
        args.repeat, args.repeat_epoch = 2, 1
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 stays float32
    header = {"torch": torch.__version__, "device": args.device}
    if args.device.startswith("cuda"):
        header["gpu"] = torch.cuda.get_device_name()
    print(header, flush=True)
    RESULTS["header"] = header
    blob = torch.load(CASES_FILE, weights_only=True)
    parts = args.parts.split(",")
    for part in parts:
        start = time.perf_counter()
        print(f"\n== {part}", flush=True)
        try:
            if part == "circuits":
                part_circuits(args)
            elif part == "epoch":
                part_epoch(args, blob)
            elif part == "solver":
                part_solver(args, blob)
            elif part == "losses":
                part_losses(args)
            else:
                raise SystemExit(f"unknown part {part!r}")
        except Exception as error:  # noqa: BLE001 -- one broken part keeps the rest
            import traceback

            traceback.print_exc()
            RESULTS[f"{part}_error"] = repr(error)
        print(f"({part}: {time.perf_counter() - start:.0f} s)", flush=True)
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "bench_cuda.json").write_text(json.dumps(RESULTS, indent=1))


if __name__ == "__main__":
    main()
