"""The ``pynsm`` command: train a circuit or an SSL model on images, and embed.

* ``pynsm train`` (:mod:`pynsm.cli.train`) trains ``--model`` with
  :class:`pynsm.train.Trainer` (also under ``torchrun``) and reports k-shot and
  all-label linear probes and kNN of its features, beside those of the untrained
  model and of the raw pixels;
* ``pynsm embed`` (:mod:`pynsm.cli.embed`) writes the features of a trained model.

``--dataset`` takes digits, MNIST, Fashion-MNIST, KMNIST, CIFAR-10/100 (their
standard splits, from ``--data-dir`` in torchvision's layout, ``--download`` to
fetch them), an image folder or a ``.npz`` (:func:`pynsm.data.load_dataset`). The
recipes of the models are in :mod:`pynsm.cli.recipes`; one is chosen from the
image size and recorded in the report and the checkpoint. Every input is checked
before any work: bad input prints one line to stderr and exits with status 2; a
run that fails (divergence, full disk) prints one line and exits with 1; Ctrl-C
and SIGTERM stop with one line and 130 / 143. :func:`main` leaves the process as
it found it (torch's thread count, signal handlers).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from types import FrameType

from pynsm.cli.args import RunError, UsageError, build_parser, parse_args
from pynsm.cli.recipes import MODELS, ModelSpec

__all__ = ["main", "build_parser", "MODELS", "ModelSpec", "UsageError", "RunError"]


class _Terminated(KeyboardInterrupt):
    """SIGTERM outside training (the Trainer raises its own inside ``fit``)."""

    exit_code = 128 + signal.SIGTERM


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pynsm`` command; returns the exit status.

    Example:
        >>> main(["train", "--epochs", "-1"])
        2
    """
    try:
        with _sigterm_raises():
            try:
                args = parse_args(argv)
            except SystemExit as exc:  # --help and --version: argparse exits
                return exc.code if isinstance(exc.code, int) else 0
            if args.command == "embed":
                from pynsm.cli import embed

                return embed.run(args)
            from pynsm.cli import train

            return train.run(args)
    except UsageError as exc:
        _say(f"pynsm: error: {exc}")
        return 2
    except RunError as exc:
        _say(f"pynsm: error: {exc}")
        return 1
    except KeyboardInterrupt as exc:
        code = int(getattr(exc, "exit_code", 128 + signal.SIGINT))
        name = "SIGTERM" if code == 128 + signal.SIGTERM else "Ctrl-C"
        _say(f"pynsm: interrupted ({name}); the last checkpoint, if any, is intact")
        return code


def _say(line: str) -> None:
    # under torchrun every process would print the same line: rank 0 speaks
    if os.environ.get("RANK", "0") == "0":
        print(line, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises :class:`_Terminated` for the run; the old handler comes back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
