#!/usr/bin/env bash
# Unpack pynsm 1.0.1 (the peer we compare against) into .peer/pynsm-1.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.peer/pynsm-1.0.1
[ -d "$dest/pynsm" ] && exit 0
mkdir -p .peer
python -m pip download -q --no-deps pynsm==1.0.1 -d .peer
python -m zipfile -e .peer/pynsm-1.0.1-py3-none-any.whl "$dest"
