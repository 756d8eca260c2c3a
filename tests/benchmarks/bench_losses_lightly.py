"""Forward+backward time of every loss that pynsm and lightly 1.4.26 both have.

lightly 1.4.26 runs in a subprocess whose ``PYTHONPATH`` is its unpacked folder
(``tests/fetch_lightly.sh`` puts it in ``.peer/lightly-1.4.26``), pynsm in a twin
subprocess; the same script builds the same inputs on both sides (same seeds, same
shapes, float32) and times ``loss = loss_fn(...); loss.backward()``. Timings are
interleaved (a round of lightly, a round of ours, ...) and the best call wins,
measured as CPU time of the timing process, so other jobs on a busy machine inflate
neither side. Prints
``ours / lightly`` (below 1: ours is faster) and the relative difference of the
first values (EMP-SSL differs on purpose: lightly adds the coding rate).

Inputs (issue 10): batch 256; two views of dim 128 for the pair losses; MoCo with a
(4096, 128) memory bank; DINO 2 teacher + 2 student views of dim 4096; MSN/PMSN 256
targets, 2 anchor views, dim 256, 1024 prototypes; SwaV 2 + 6 crops, 1024
prototypes; VICRegL 2 global (7x7) + 6 local (4x4) views of dim 128; MMCR 2 views of
dim 128; W-MSE 2 views of dim 64 (sub-batches of 128); EMP-SSL 4 views of dim 128.

Run (optionally with a thread count, a number of rounds and a comma-separated list of
cases)::

    tests/fetch_lightly.sh
    PYTHONPATH=. .venv/bin/python tests/benchmarks/bench_losses_lightly.py 1

On a GPU, add ``--device cuda`` (inputs, buffers and the timing move there: wall
time with a synchronisation after each call instead of CPU time) and ``--compile``
to time ``torch.compile``-d losses on both sides (compiled once, before timing);
``--cases A,B`` picks cases by name.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import subprocess
import sys
import time
import types
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[2]
LIGHTLY_DIR = ROOT / ".peer" / "lightly-1.4.26"
B = 256
# glibc serves blocks above a moving threshold with mmap and returns them on free, so
# a process can fall into a mode where every multi-megabyte tensor page-faults anew
# (seen here as a sticky 20-40% slowdown of one side at random, e.g. the MoCo case).
# Both workers keep large blocks on the heap instead; set these variables yourself to
# measure with other values (the environment wins).
STEADY_MALLOC = {
    "MALLOC_MMAP_THRESHOLD_": str(2**32),
    "MALLOC_TRIM_THRESHOLD_": str(2**32),
}

# name: (lightly module, class, constructor kwargs, inputs(g) -> args, call kwargs)
CASES: dict[str, tuple[str, str, dict[str, Any], Callable[..., list[Any]], dict]] = {}


def _case(name, module, cls, kwargs=None, call=None):
    def register(inputs):
        CASES[name] = (module, cls, kwargs or {}, inputs, call or {})
        return inputs

    return register


def _leaf(*shape, g, scale=1.0):
    return (torch.randn(*shape, generator=g) * scale).requires_grad_()


def _pair(dim=128):
    return lambda g: [_leaf(B, dim, g=g), _leaf(B, dim, g=g)]


for _name, _module, _cls, _kwargs in [
    ("NTXent (SimCLR)", "loss.ntx_ent_loss", "NTXentLoss", {}),
    ("DCL", "loss.dcl_loss", "DCLLoss", {}),
    ("DCLW", "loss.dcl_loss", "DCLWLoss", {}),
    ("BarlowTwins", "loss.barlow_twins_loss", "BarlowTwinsLoss", {}),
    ("VICReg", "loss.vicreg_loss", "VICRegLoss", {}),
    ("TiCo", "loss.tico_loss", "TiCoLoss", {}),
    ("Hypersphere", "loss.hypersphere_loss", "HypersphereLoss", {}),
    ("NegativeCosine", "loss.negative_cosine_similarity",
     "NegativeCosineSimilarity", {}),
    ("CO2", "loss.regularizer.co2", "CO2Regularizer", {}),
    ("NTXent (MoCo bank)", "loss.ntx_ent_loss", "NTXentLoss",
     {"memory_bank_size": (4096, 128)}),
]:  # fmt: skip
    _case(_name, _module, _cls, _kwargs)(_pair())


@_case("SymNegCosine", "loss.sym_neg_cos_sim_loss", "SymNegCosineSimilarityLoss")
def _sym(g):
    return [(_leaf(B, 128, g=g), _leaf(B, 128, g=g)) for _ in range(2)]


@_case("DINO", "loss.dino_loss", "DINOLoss", {"output_dim": 4096}, {"epoch": 0})
def _dino(g):
    teacher = [torch.randn(B, 4096, generator=g) for _ in range(2)]
    return [teacher, [_leaf(B, 4096, g=g) for _ in range(2)]]


@_case("MSN", "loss.msn_loss", "MSNLoss")
def _msn(g):
    anchors, prototypes = _leaf(2 * B, 256, g=g), _leaf(1024, 256, g=g)
    return [anchors, torch.randn(B, 256, generator=g), prototypes]


@_case("PMSN", "loss.pmsn_loss", "PMSNLoss")
def _pmsn(g):
    return _msn(g)


@_case("SwaV", "loss.swav_loss", "SwaVLoss")
def _swav(g):
    # prototype scores as SwaV computes them: cosines of unit features and prototypes
    prototypes = torch.nn.functional.normalize(torch.randn(1024, 128, generator=g))

    def scores():
        features = torch.nn.functional.normalize(torch.randn(B, 128, generator=g))
        return (features @ prototypes.T).requires_grad_()

    return [[scores() for _ in range(2)], [scores() for _ in range(6)]]


@_case("VICRegL", "loss.vicregl_loss", "VICRegLLoss")
def _vicregl(g):
    def views(count, side):
        return [
            (_leaf(B, 128, g=g), _leaf(B, side, side, 128, g=g)) for _ in range(count)
        ]

    def grids(count, side):
        return [torch.rand(B, side, side, 2, generator=g) for _ in range(count)]

    return [views(2, 7), grids(2, 7), views(6, 4), grids(6, 4)]


@_case("MMCR", "loss.mmcr_loss", "MMCRLoss")
def _mmcr(g):
    return [_leaf(B, 2, 128, g=g), torch.randn(B, 2, 128, generator=g)]


@_case("WMSE", "loss.wmse_loss", "WMSELoss", {"embedding_dim": 64, "w_size": 128})
def _wmse(g):
    return [_leaf(2 * B, 64, g=g)]


@_case("EMPSSL", "loss.emp_ssl_loss", "EMPSSLLoss")
def _empssl(g):
    return [[_leaf(B, 128, g=g) for _ in range(4)]]


def _leaves(args: Any) -> list[torch.Tensor]:
    if isinstance(args, torch.Tensor):
        return [args] if args.requires_grad else []
    if isinstance(args, (list, tuple)):
        return [leaf for item in args for leaf in _leaves(item)]
    return []


def _import_lightly(module: str) -> types.ModuleType:
    """``lightly.<module>`` without running lightly's package ``__init__`` files
    (they import its API client and torchvision, which its losses do not need)."""
    if "lightly" not in sys.modules:
        spec = importlib.util.find_spec("lightly")
        if spec is None or not spec.submodule_search_locations:
            sys.exit("lightly not on PYTHONPATH")
        root = Path(list(spec.submodule_search_locations)[0])
        for package in ("", ".loss", ".loss.regularizer", ".models", ".models.modules",
                        ".utils"):  # fmt: skip
            stub = types.ModuleType("lightly" + package)
            stub.__path__ = [str(root.joinpath(*package.split(".")[1:]))]
            sys.modules["lightly" + package] = stub
        sys.modules["lightly"]._torchvision_vit_available = False
        if importlib.util.find_spec("torchvision") is None:
            ops = types.ModuleType("torchvision.ops")
            ops.StochasticDepth = None
            sys.modules["torchvision"] = types.ModuleType("torchvision")
            sys.modules["torchvision"].ops = ops
            sys.modules["torchvision.ops"] = ops
    return importlib.import_module("lightly." + module)


def _to(args: Any, device: str) -> Any:
    """``args`` on ``device``, leaves kept leaves (``requires_grad`` as before)."""
    if isinstance(args, torch.Tensor):
        return args.detach().to(device).requires_grad_(args.requires_grad)
    if isinstance(args, (list, tuple)):
        return type(args)(_to(item, device) for item in args)
    return args


class Bench:
    """Builds the cases of one side (``ours`` or ``lightly``) and times them."""

    def __init__(self, side: str, device: str = "cpu", compiled: bool = False) -> None:
        self.side = side
        self.device = device
        self.compiled = compiled
        self.built: dict[str, tuple[Any, list[Any], dict]] = {}

    def build(self, name: str) -> tuple[Any, list[Any], dict]:
        if name not in self.built:
            module, cls, kwargs, inputs, call = CASES[name]
            if self.side == "lightly":
                factory = getattr(_import_lightly(module), cls)
            else:
                factory = getattr(importlib.import_module("pynsm.losses"), cls)
            torch.manual_seed(0)
            loss_fn = factory(**kwargs)
            if isinstance(loss_fn, torch.nn.Module):
                loss_fn = loss_fn.to(self.device)
            if self.compiled:
                loss_fn = torch.compile(loss_fn)
            args = _to(inputs(torch.Generator().manual_seed(1)), self.device)
            self.built[name] = (loss_fn, args, call)
        return self.built[name]

    def value(self, name: str) -> float:
        loss_fn, args, call = self.build(name)
        torch.manual_seed(2)
        return float(loss_fn(*args, **call).detach())

    def time(self, name: str, repeats: int) -> float:
        loss_fn, args, call = self.build(name)
        leaves = _leaves(args)
        cuda = self.device.startswith("cuda")
        # CPU time on the CPU (robust to other jobs); wall time up to a
        # synchronisation on a GPU, whose work the CPU clock does not see
        clock = time.perf_counter if cuda else time.process_time
        best = float("inf")
        for _ in range(repeats):
            for leaf in leaves:
                leaf.grad = None
            if cuda:
                torch.cuda.synchronize()
            start = clock()
            loss_fn(*args, **call).backward()
            if cuda:
                torch.cuda.synchronize()
            best = min(best, clock() - start)
        return best


def _worker(side: str, threads: int, device: str, compiled: bool) -> None:
    warnings.simplefilter("ignore")  # lightly's deprecation notices
    torch.set_num_threads(threads)
    bench = Bench(side, device, compiled)
    for line in sys.stdin:
        command, name, number = line.rstrip("\n").split("|")
        try:
            if command == "value":
                result = bench.value(name)
            else:
                result = bench.time(name, int(number))
        except Exception as error:  # noqa: BLE001 -- one case must not end the run
            print(f"{side} {name}: {type(error).__name__}: {error}", file=sys.stderr)
            result = float("nan")
        print(repr(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("threads", nargs="?", type=int, default=1)
    parser.add_argument("rounds", nargs="?", type=int, default=5)
    parser.add_argument("only", nargs="?", default=None, help="cases, comma-separated")
    parser.add_argument("--cases", default=None, help="cases, comma-separated")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true")
    options = parser.parse_args()
    threads, rounds = options.threads, options.rounds
    chosen = options.cases or options.only
    only = chosen.split(",") if chosen else list(CASES)
    unknown = sorted(set(only) - set(CASES))
    if unknown:
        sys.exit(f"unknown cases {unknown}; known: {sorted(CASES)}")
    repeats = 3
    if not (LIGHTLY_DIR / "lightly" / "loss").is_dir():
        sys.exit(f"lightly 1.4.26 not in {LIGHTLY_DIR}: run tests/fetch_lightly.sh")
    # both sides run in worker processes of the same shape, so neither carries
    # this process's state; they take turns, one timing request at a time
    workers = {
        side: subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                side,
                str(threads),
                options.device,
                str(int(options.compile)),
            ],  # fmt: skip
            env={**STEADY_MALLOC, **os.environ, "PYTHONPATH": path},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for side, path in (("lightly", str(LIGHTLY_DIR)), ("ours", str(ROOT)))
    }

    def ask(side: str, command: str, name: str, number: int = 0) -> float:
        worker = workers[side]
        worker.stdin.write(f"{command}|{name}|{number}\n")
        worker.stdin.flush()
        return float(worker.stdout.readline())

    where = options.device + (", torch.compile" if options.compile else "")
    print(f"torch {torch.__version__}, {where}, {threads} thread(s), batch {B}, "
          f"fwd+bwd, best of {rounds} x {repeats} interleaved calls")  # fmt: skip
    header = f"{'loss':<20}{'lightly ms':>11}{'ours ms':>9}{'ratio':>7}"
    print(header + f"{'value rel.diff':>16}")
    try:
        for name in only:
            theirs_value = ask("lightly", "value", name)
            our_value = ask("ours", "value", name)
            ask("lightly", "time", name, 1)  # warm-up
            ask("ours", "time", name, 1)
            theirs = mine = float("inf")
            for _ in range(rounds):
                theirs = min(theirs, ask("lightly", "time", name, repeats))
                mine = min(mine, ask("ours", "time", name, repeats))
            diff = abs(our_value - theirs_value) / max(abs(theirs_value), 1e-12)
            print(
                f"{name:<20}{1e3 * theirs:>11.2f}{1e3 * mine:>9.2f}"
                f"{mine / theirs:>7.2f}{diff:>16.1e}",
                flush=True,
            )
    finally:
        for worker in workers.values():
            worker.stdin.close()
            worker.wait()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5] == "1")
    else:
        main()
