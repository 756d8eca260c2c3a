"""Time to the fixed point: `solver="accelerated"` against `"gradient"` (issue 16).

Run from the repository root (one thread: the machine is shared):

    OMP_NUM_THREADS=1 .venv/bin/python tests/benchmarks/bench_fixed_point.py \
        [--part speed|curves|training|all] [--repeat N] [--mnist-images N] \
        [--figure PATH]
    OMP_NUM_THREADS=1 .venv/bin/python tests/benchmarks/bench_fixed_point.py \
        --part mnist --model sm|supervised-sm --solver accelerated|gradient \
        [--json PATH]

**speed** -- for each case the inner problem (`M`, the drive `b = sum_k W_k x_k`, the
projection) is fixed, in float64, and solved by a circuit whose encoder is the
identity, so that the time is the solve's alone. `"gradient"` gets just enough
plain steps to reach each relative fixed-point residual `||y - T(y)|| / ||y||`
(found once with an iteration hook, then timed without it, as a fixed count,
`tol=0`); `"accelerated"` gets the residual as `tol`. The residual of every timed
answer is checked. Timings are interleaved (gradient, accelerated, again) and the
best of `--repeat` is kept. Cases:

* (a) the `supervised-sm` recipe (`pynsm.cli.recipes`) trained on the digits for a
  few epochs; `b` of the 1,347 training images with their labels (linear);
* (b) pynsm 1.0.1's conv demo circuit, `Conv2d(1, 50, 6)` with ReLU, trained one
  epoch (SGD lr 0.05, batch 100) on the first `--mnist-images` MNIST images; `b`
  of 32 test images `[32, 50, 23, 23]`;
* (c) dense circuits, 100 channels, batch 512, `M = Q diag(linspace(lo, hi)) Q^T`
  with condition 9 (`[0.2, 1.8]`) and 40 (`[0.045, 1.8]`), `b` standard normal,
  with and without ReLU. The spectra are centred on 1, where step 1 is the best
  plain step: the gradient solver gets its best case.

**curves** -- the residual-against-time curve of both solvers on the same cases:
the time and the residual reached for a sweep of tolerances from 1e-1 to 1e-10
(`"gradient"`: just enough steps for each, timed as above), printed and drawn
into `--figure` (the figure of docs/benchmarks.md; needs matplotlib).

**training** -- the same training run with each solver: the digits recipes
(`supervised-sm`: test accuracy of `predict`; `sm`: final loss and residual) and
one epoch of the conv demo on MNIST (seconds, loss, residual).

**mnist** (not part of `all`: 10-15 minutes a run) -- `pynsm train --model MODEL
--dataset mnist` (real MNIST in `.data`, the large recipe's defaults, seed 0) with
the inner solver of its circuits as the recipe has it (`--solver accelerated`) or
as pynsm 1.0.1 has it (`--solver gradient`: plain steps, each circuit's own
`max_iterations` -- 40 for the conv circuits, 60 for the supervised one -- and no
tolerance); the command's own report (times, readouts against random init and
pixels). Run the two side by side, one per core, to compare their times.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pynsm.arch import SimilarityMatching  # noqa: E402
from pynsm.train.task import fixed_point_residual  # noqa: E402

TOLS = (1e-4, 1e-6, 1e-8)
TARGET = 1e-6
MNIST = ROOT / ".data" / "MNIST" / "raw"


# --------------------------------------------------------------------- the cases
def read_mnist(split: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `count` images `[N, 1, 28, 28]` in [0, 1] and labels of a split."""
    prefix = "train" if split == "train" else "t10k"
    images = np.fromfile(MNIST / f"{prefix}-images-idx3-ubyte", np.uint8, offset=16)
    labels = np.fromfile(MNIST / f"{prefix}-labels-idx1-ubyte", np.uint8, offset=8)
    images = images.reshape(-1, 1, 28, 28)[:count].astype(np.float32) / 255
    return torch.from_numpy(images), torch.from_numpy(labels[:count].astype(np.int64))


def conv_demo(**settings) -> SimilarityMatching:
    """pynsm 1.0.1's conv demo circuit (40 plain steps), `settings` changed."""
    torch.manual_seed(0)
    kwargs = {"tau": 0.1, "max_iterations": 40, "iteration_projection": torch.relu}
    return SimilarityMatching(nn.Conv2d(1, 50, 6), out_channels=50, **kwargs | settings)


def train_conv_demo(circuit: SimilarityMatching, images: torch.Tensor) -> float:
    """One epoch, SGD lr 0.05, batch 100; returns the seconds it took."""
    optimizer = torch.optim.SGD(circuit.parameters(), lr=0.05)
    start = time.perf_counter()
    for x in images.split(100):
        y = circuit(x)
        loss = circuit.loss(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def recipe_task(model: str, **circuit_settings):
    """The digits recipe of `model`, its circuit's settings changed."""
    from pynsm.cli.recipes import MODELS

    torch.manual_seed(0)
    task = MODELS[model].build(1, 8, 10)
    for name, value in circuit_settings.items():
        setattr(task.circuit, name, value)
    return task


def train_recipe(task, model: str, epochs: int) -> tuple[float, list]:
    from pynsm.cli.recipes import MODELS
    from pynsm.data import load_digits
    from pynsm.train import Trainer

    spec = MODELS[model]
    train, _ = load_digits()
    trainer = Trainer(
        task,
        epochs=epochs,
        batch_size=spec.batch_size,
        optimizer=spec.optimizer,
        lr=spec.lr,
        progress=False,
        seed=0,
        device="cpu",
    )
    start = time.perf_counter()
    history = trainer.fit(train)
    return time.perf_counter() - start, history


def case_supervised_digits(epochs: int):
    """(a): `b`, `M` of the supervised-sm recipe after `epochs` on the digits."""
    from pynsm.data import load_digits

    task = recipe_task("supervised-sm")
    train_recipe(task, "supervised-sm", epochs)
    circuit = task.circuit.eval()
    train, _ = load_digits()
    x, labels = train.tensors
    onehot = nn.functional.one_hot(labels, 10).float()
    with torch.no_grad():
        b = circuit.encoders[0](x) + circuit.encoders[1](onehot)
    return b.double(), circuit.competitor.weight.detach().double(), None


def case_conv_demo(images: int):
    """(b): `b`, `M` of the conv demo after one epoch on `images` MNIST images."""
    circuit = conv_demo()
    x, _ = read_mnist("train", images)
    train_conv_demo(circuit, x)
    test, _ = read_mnist("test", 32)
    with torch.no_grad():
        b = circuit.encoder(test)
    return b.double(), circuit.competitor.weight.detach().double(), torch.relu


def case_dense(low: float, high: float, relu: bool):
    generator = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(100, 100, generator=generator).double())
    weight = (q * torch.linspace(low, high, 100).double()) @ q.T
    b = torch.randn(512, 100, generator=generator).double()
    return b, weight, torch.relu if relu else None


# ------------------------------------------------------------------- measuring
def solver_circuit(
    weight, projection, solver, tol, iterations, device="cpu"
) -> SimilarityMatching:
    """A circuit with the identity as encoder: `forward(b)` is the inner solve."""
    circuit = SimilarityMatching(
        nn.Identity(),
        weight.shape[0],
        tol=tol,
        max_iterations=iterations,
        iteration_projection=projection,
        solver=solver,
    ).double()
    with torch.no_grad():
        circuit.competitor.weight.copy_(weight)
    return circuit.to(device)


def residual(circuit, y, b) -> float:
    return float(fixed_point_residual(circuit, y, [b]))


def gradient_iterations(b, weight, projection, tols, cap=20000, device="cpu") -> dict:
    """The fewest plain steps that reach each tolerance (one run, with a hook)."""
    circuit = solver_circuit(weight, projection, "gradient", 0.0, cap, device)
    needed: dict = {}

    def watch(module):
        value = residual(module, module.y, b)
        for tol in tols:
            if tol not in needed and value <= tol:
                needed[tol] = module.iteration_idx + 1
        return len(needed) == len(tols)

    circuit.register_iteration_hook("iteration", watch)
    circuit(b)
    return needed


def best_time(fn, repeat: int) -> float:
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure_case(name, b, weight, projection, repeat, tols=TOLS) -> list[dict]:
    needed = gradient_iterations(b, weight, projection, tols)
    rows = []
    for tol in tols:
        plain = solver_circuit(weight, projection, "gradient", 0.0, needed[tol])
        fast = solver_circuit(weight, projection, "accelerated", tol, 20000)
        times = {"gradient": math.inf, "accelerated": math.inf}
        for _ in range(repeat):  # interleaved
            for key, circuit in (("gradient", plain), ("accelerated", fast)):
                times[key] = min(times[key], best_time(lambda c=circuit: c(b), 1))
        y_fast = fast(b)
        rows.append(
            {
                "case": name,
                "tol": tol,
                "gradient_iterations": needed[tol],
                "gradient_s": times["gradient"],
                "gradient_residual": residual(plain, plain(b), b),
                "accelerated_iterations": fast.iteration_idx + 1,
                "accelerated_s": times["accelerated"],
                "accelerated_residual": residual(fast, y_fast, b),
            }
        )
    return rows


def spectrum(weight) -> str:
    eig = torch.linalg.eigvalsh((weight + weight.T) / 2)
    return f"eig(M) in [{eig[0]:.3f}, {eig[-1]:.3f}], condition {eig[-1] / eig[0]:.1f}"


def build_cases(args) -> dict:
    """The inner problems (a)-(c), by name: `(b, M, projection)`."""
    return {
        "(a) supervised-sm, digits": case_supervised_digits(args.digits_epochs),
        "(b) conv demo, MNIST": case_conv_demo(args.mnist_images),
        "(c) dense, condition 9": case_dense(0.2, 1.8, False),
        "(c) dense, condition 9, ReLU": case_dense(0.2, 1.8, True),
        "(c) dense, condition 40": case_dense(0.045, 1.8, False),
        "(c) dense, condition 40, ReLU": case_dense(0.045, 1.8, True),
    }


def part_speed(args) -> None:
    start = time.perf_counter()
    cases = build_cases(args)
    print(f"cases built in {time.perf_counter() - start:.0f} s")
    rows = []
    for name, (b, weight, projection) in cases.items():
        print(f"{name}: b {tuple(b.shape)}, {spectrum(weight)}", flush=True)
        rows += measure_case(name, b, weight, projection, args.repeat)

    print(
        f"\ntorch {torch.__version__}, {torch.get_num_threads()} thread(s), float64, "
        f"best of {args.repeat} interleaved runs"
    )
    header = (
        "| case | residual | gradient: steps | time | accelerated: steps | time | "
        "speed-up |"
    )
    print(header)
    print("| --- | --- | --- | --- | --- | --- | --- |")
    ratios = []
    for row in rows:
        ratio = row["gradient_s"] / row["accelerated_s"]
        if row["tol"] == TARGET:
            ratios.append(ratio)
        for key in ("gradient_residual", "accelerated_residual"):
            assert row[key] <= row["tol"], (row["case"], key, row[key])
        print(
            f"| {row['case']} | {row['tol']:.0e} | {row['gradient_iterations']} | "
            f"{row['gradient_s'] * 1e3:.2f} ms | {row['accelerated_iterations']} | "
            f"{row['accelerated_s'] * 1e3:.2f} ms | {ratio:.1f}x |"
        )
    geometric = math.exp(sum(map(math.log, ratios)) / len(ratios))
    print(
        f"\nat residual {TARGET:.0e}: smallest speed-up {min(ratios):.2f}x, "
        f"geometric mean {geometric:.2f}x"
    )


#: the tolerances of the curves: 1e-1, 10^-1.5, ..., 1e-10
CURVE_TOLS = tuple(10 ** (-k / 2) for k in range(2, 21))


def part_curves(args) -> None:
    """Residual against time of both solvers on every case, printed and drawn."""
    cases = build_cases(args)
    curves = {}
    print("| case | solver | steps | time | residual |")
    print("| --- | --- | --- | --- | --- |")
    for name, (b, weight, projection) in cases.items():
        rows = measure_case(name, b, weight, projection, args.repeat, CURVE_TOLS)
        curves[name] = rows
        for row in rows:
            for solver in ("gradient", "accelerated"):
                print(
                    f"| {name} | {solver} | {row[solver + '_iterations']} | "
                    f"{row[solver + '_s'] * 1e3:.2f} ms | "
                    f"{row[solver + '_residual']:.1e} |"
                )
        print(flush=True)
    if args.figure is not None:
        draw_curves(curves, args.figure)
        print(f"figure written to {args.figure}")


def draw_curves(curves: dict, path: Path) -> None:
    """One panel per case: residual (log) against milliseconds, both solvers."""
    import matplotlib

    matplotlib.use("Agg")
    # text as text (a smaller SVG), no date or random ids (a reproducible file)
    matplotlib.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "pynsm"})
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 3, figsize=(11, 6.4), constrained_layout=True)
    for axis, (name, rows) in zip(axes.flat, curves.items()):
        for solver, style in (("gradient", "o-"), ("accelerated", "s-")):
            # the best time for each residual reached (a larger tol may land lower)
            points = sorted(
                (row[solver + "_s"] * 1e3, max(row[solver + "_residual"], 1e-16))
                for row in rows
            )
            axis.plot(*zip(*points), style, markersize=3, label=solver)
        axis.axhline(TARGET, color="grey", linewidth=0.6, linestyle=":")
        axis.set_yscale("log")
        axis.set_xlim(left=0)
        axis.set_title(name, fontsize=10)
        axis.set_xlabel("time (ms)")
        axis.set_ylabel("relative fixed-point residual")
        axis.legend(fontsize=8)
    figure.suptitle(
        f"Time to the fixed point, float64, one CPU thread, torch {torch.__version__}"
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, metadata={"Date": None})
    plt.close(figure)


def part_mnist(args) -> int:
    """A circuit recipe of `pynsm train` on MNIST, its circuits' inner solver set by
    `--solver`: as the recipe has it, or plain steps without a tolerance."""
    import dataclasses

    from pynsm.arch.similarity import MultiSimilarityMatching
    from pynsm.cli import main as pynsm_main
    from pynsm.cli import recipes

    spec = recipes.LARGE_MODELS[args.model]

    def build(*build_args):
        task = spec.build(*build_args)
        if args.solver == "gradient":  # each circuit's own cap as a fixed count
            for module in task.modules():
                if isinstance(module, MultiSimilarityMatching):
                    module.solver, module.tol = "gradient", 0.0
        return task

    recipes.LARGE_MODELS[args.model] = dataclasses.replace(spec, build=build)
    command = ["train", "--model", args.model, "--dataset", "mnist", "--data-dir"]
    command += [str(ROOT / ".data"), "--no-progress"]
    if args.json is not None:
        command += ["--json", str(args.json)]
    print(f"{args.model}, inner solver: {args.solver}", flush=True)
    return pynsm_main(command)


def part_training(args) -> None:
    from pynsm.data import load_digits

    _, test = load_digits()
    print("| run | solver | seconds | result | last-epoch residual |")
    print("| --- | --- | --- | --- | --- |")
    settings = {
        "gradient": {},
        "accelerated": {"solver": "accelerated", "tol": args.recipe_tol},
    }
    for solver, changes in settings.items() if args.recipes else ():
        task = recipe_task("supervised-sm", **changes)
        seconds, history = train_recipe(task, "supervised-sm", args.recipe_epochs)
        circuit = task.circuit.eval()
        accuracy = float(
            (circuit.predict(test.tensors[0]) == test.tensors[1]).float().mean()
        )
        print(
            f"| supervised-sm, digits, {args.recipe_epochs} epochs | {solver} | "
            f"{seconds:.1f} | test accuracy of predict {accuracy:.3f} | "
            f"{history[-1]['residual']:.1e} |",
            flush=True,
        )
    for solver, changes in settings.items() if args.recipes else ():
        task = recipe_task("sm", **changes)
        seconds, history = train_recipe(task, "sm", args.recipe_epochs)
        print(
            f"| sm, digits, {args.recipe_epochs} epochs | {solver} | {seconds:.1f} | "
            f"last-epoch loss {history[-1]['loss']:.4f} | "
            f"{history[-1]['residual']:.1e} |",
            flush=True,
        )
    images, _ = read_mnist("train", args.mnist_images)
    test_x, _ = read_mnist("test", 500)
    demo = {
        "gradient": {},
        "accelerated": {"solver": "accelerated", "tol": args.demo_tol},
    }
    for solver, changes in demo.items():
        circuit = conv_demo(**changes)
        seconds = train_conv_demo(circuit, images)
        # the loss of held-out images at their (nearly exact, float64) fixed points
        exact = conv_demo(solver="accelerated", tol=1e-9, max_iterations=500)
        exact.load_state_dict(circuit.state_dict())
        exact.double()
        y = exact(test_x.double())
        with torch.no_grad():
            loss = float(exact.loss(test_x.double(), y))
            y_own = circuit(test_x)
            own = residual(circuit, y_own, circuit.encoder(test_x))
        print(
            f"| conv demo, MNIST, 1 epoch of {args.mnist_images} | {solver} | "
            f"{seconds:.1f} | test loss at the fixed point {loss:.5f} | "
            f"{own:.1e} (test) |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--part",
        choices=("speed", "curves", "training", "all", "mnist"),
        default="all",
    )
    parser.add_argument(
        "--solver",
        choices=("accelerated", "gradient"),
        default="accelerated",
        help="mnist part: the inner solver of the recipe's circuits",
    )
    parser.add_argument(
        "--model",
        choices=("sm", "supervised-sm"),
        default="sm",
        help="mnist part: the circuit recipe",
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="mnist part: write the metrics here"
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--digits-epochs", type=int, default=20)
    parser.add_argument("--recipe-epochs", type=int, default=20)
    parser.add_argument("--recipe-tol", type=float, default=1e-6)
    parser.add_argument("--demo-tol", type=float, default=1e-4)
    parser.add_argument("--mnist-images", type=int, default=3000)
    parser.add_argument(
        "--no-recipes",
        dest="recipes",
        action="store_false",
        help="training part: only the conv demo",
    )
    parser.add_argument(
        "--figure",
        type=Path,
        default=None,
        help="curves part: draw the curves into this file (.svg or .png)",
    )
    args = parser.parse_args()
    if args.part == "mnist":
        sys.exit(part_mnist(args))
    if args.part in ("speed", "all"):
        part_speed(args)
    if args.part in ("curves", "all"):
        part_curves(args)
    if args.part in ("training", "all"):
        part_training(args)


if __name__ == "__main__":
    main()
