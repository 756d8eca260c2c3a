"""Cost of ``pynsm train`` as the dataset grows: training vs evaluation, peak memory.

Run: ``python tests/benchmarks/bench_eval_scaling.py [--sizes 2000 8000 32000]
[--model supervised-sm] [--epochs 1] [--threads 1]``.

Builds MNIST-sized data from scikit-learn's digits: the 8x8 images upsampled to
28x28 (bilinear, ``torch.nn.functional.interpolate``) and repeated with random
shifts of up to 2 pixels until the wanted number of images is reached; saved as a
uint8 ``.npz``. Then runs ``python -m pynsm train --dataset FILE.npz --epochs 1``
in a fresh process for each size and reports, from its ``--json``, the training
seconds and the evaluation seconds (all readouts: pixels, untrained and trained
models, the per-epoch kNN), plus the wall time and the peak resident memory of
that process (``os.wait4``'s ``ru_maxrss``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def mnist_sized_digits(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` 28x28 uint8 images (upsampled, shifted digits) and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    base = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    base = torch.nn.functional.interpolate(
        base, size=(28, 28), mode="bilinear", align_corners=False
    )
    generator = torch.Generator().manual_seed(seed)
    index = torch.arange(count) % len(base)
    images = base[index].clone()
    shifts = torch.randint(-2, 3, (count, 2), generator=generator)
    for dy, dx in shifts.unique(dim=0).tolist():
        rows = ((shifts[:, 0] == dy) & (shifts[:, 1] == dx)).nonzero().flatten()
        images[rows] = torch.roll(images[rows], shifts=(dy, dx), dims=(2, 3))
    pixels = (images.squeeze(1).clamp(0, 1) * 255).round().to(torch.uint8)
    labels = torch.as_tensor(digits.target)[index]
    return pixels.numpy(), labels.numpy()


def run_once(path: str, args: argparse.Namespace) -> dict[str, float]:
    report = path + ".json"
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    command = [
        sys.executable,
        "-m",
        "pynsm",
        "train",
        "--model",
        args.model,
        "--dataset",
        path,
        "--epochs",
        str(args.epochs),
        "--no-progress",
        "--json",
        report,
    ]
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    output = process.stdout.read() if process.stdout else ""
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"pynsm train failed ({process.returncode}):\n{output}")
    with open(report) as handle:
        result = json.load(handle)
    return {
        "train_s": result["train_seconds"],
        "eval_s": result["eval_seconds"],
        "wall_s": wall,
        # ru_maxrss is in KiB on Linux
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "test_accuracy": result["test_accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000, 32000])
    parser.add_argument("--model", default="supervised-sm")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print(
        f"pynsm train --model {args.model} --epochs {args.epochs}, "
        f"OMP_NUM_THREADS={args.threads}, 28x28 images"
    )
    print(
        f"{'images':>8} {'train s':>9} {'eval s':>8} {'eval/train':>10} "
        f"{'wall s':>8} {'peak MB':>8}"
    )
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            images, labels = mnist_sized_digits(size)
            path = os.path.join(folder, f"digits28_{size}.npz")
            np.savez(path, images=images, labels=labels)
            row = run_once(path, args)
            ratio = row["eval_s"] / max(row["train_s"], 1e-9)
            print(
                f"{size:>8} {row['train_s']:>9.1f} {row['eval_s']:>8.1f} "
                f"{ratio:>10.2f} {row['wall_s']:>8.1f} {row['peak_rss_mb']:>8.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
