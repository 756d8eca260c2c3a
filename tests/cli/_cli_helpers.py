"""Helpers of the command-line tests (imported by the test modules)."""

from __future__ import annotations

import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def digits_arrays(count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` digits as uint8 ``[N, 8, 8]`` images and labels 0-9."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images[:count] * 255 / 16).round().astype(np.uint8)
    return images, digits.target[:count]


def subprocess_env() -> dict[str, str]:
    """The environment of a ``python -m pynsm`` child: this checkout, one thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def one_line_error(err: str, match: str) -> None:
    """``err`` is one ``pynsm: error:`` line containing ``match``, no traceback."""
    assert err.count("\n") == 1, err
    assert err.startswith("pynsm: ") and "Traceback" not in err, err
    assert match in err, err
