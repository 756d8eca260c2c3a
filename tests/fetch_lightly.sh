#!/usr/bin/env bash
# Unpack lightly 1.4.26 (the loss API users write against; benchmark peer) and
# lightly 1.6.0 (the newer losses) into .peer/lightly-<version>, without their
# dependencies: the side-by-side tests and tests/benchmarks/bench_losses_lightly.py
# import single loss modules from there. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .peer
for version in 1.4.26 1.6.0; do
    dest=.peer/lightly-$version
    [ -d "$dest/lightly/loss" ] && continue
    wheel=.peer/lightly-$version-py3-none-any.whl
    [ -f "$wheel" ] || python -m pip download -q --no-deps "lightly==$version" -d .peer
    python -m zipfile -e "$wheel" "$dest"
done
