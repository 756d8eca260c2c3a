"""Speed of the batched multi-crop against cropping image by image.

Run: ``python tests/benchmarks/bench_ssl_multicrop.py [--batch 256] [--size 8]``.
Both paths use the same resampling (one ``grid_sample`` per view); the per-image
path is what a per-sample ``Dataset`` transform does. Prints seconds per batch and
the ratio (per-image / batched).
"""

from __future__ import annotations

import argparse
import time

import torch

from pynsm.data.multicrop import MultiCrop


def _time(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=8)
    parser.add_argument("--num-local", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    images = torch.rand(args.batch, 1, args.size, args.size, device=args.device)
    crops = MultiCrop(
        global_size=args.size, local_size=args.size // 2, num_local=args.num_local
    )

    def batched() -> None:
        crops(images)

    def per_image() -> None:
        for image in images:
            crops(image[None])

    t_batched = _time(batched, args.repeats)
    t_single = _time(per_image, args.repeats)
    print(
        f"batch={args.batch} size={args.size} views={2 + args.num_local} "
        f"device={args.device}: batched {t_batched * 1e3:.2f} ms, per-image "
        f"{t_single * 1e3:.2f} ms, ratio {t_single / t_batched:.1f}x"
    )


if __name__ == "__main__":
    main()
