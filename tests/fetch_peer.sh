#!/usr/bin/env bash
# Unpack the peers we compare against into .peer/: pynsm 1.0.1 (circuits) and,
# through tests/fetch_lightly.sh, lightly 1.4.26 and 1.6.0 (losses). Without them
# the parity tests and the benchmarks skip. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.peer/pynsm-1.0.1
if [ ! -d "$dest/pynsm" ]; then
    mkdir -p .peer
    python -m pip download -q --no-deps pynsm==1.0.1 -d .peer
    python -m zipfile -e .peer/pynsm-1.0.1-py3-none-any.whl "$dest"
fi
bash tests/fetch_lightly.sh
