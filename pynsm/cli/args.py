"""Parsing and checking the command line: every flag is validated before any work."""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Sequence
from typing import Any, Callable, NoReturn

import torch

from pynsm.cli.recipes import MODELS
from pynsm.validation import check_float, check_int

__all__ = [
    "UsageError",
    "RunError",
    "build_parser",
    "parse_args",
    "fail",
    "check_output_file",
    "probe_directory",
]

#: Largest --batch-size / --epochs accepted: sizes torch indexes with 32-bit ints.
MAX_COUNT = 2**31 - 1
#: Largest --seed: seeds of NumPy, Python and torch all accept 0..2**32-1.
MAX_SEED = 2**32 - 1
#: Largest --lr: the optimizers store it in float32 tensors beside the weights,
#: and a larger number ends in an overflow traceback instead of a message.
MAX_FLOAT32 = float(torch.finfo(torch.float32).max)


class UsageError(Exception):
    """Bad command-line input: reported on one line, exit status 2."""


class RunError(Exception):
    """The work failed (divergence, a full disk): one line, exit status 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage block
        raise UsageError(message)


def _parsed(
    name: str, convert: Callable[[str], Any], kind: str, check: Callable[[Any], Any]
) -> Callable[[str], Any]:
    """An argparse ``type``: ``convert`` the text, then ``check`` the value; both
    failures become one-line usage errors naming the flag."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} must be {kind}, got {text!r}"
            ) from None
        try:
            return check(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _integer(name: str, minimum: int, maximum: int) -> Callable[[str], int]:
    return _parsed(
        name,
        int,
        "an integer",
        lambda value: check_int(name, value, minimum=minimum, maximum=maximum),
    )


def _float_at_least(name: str, minimum: float) -> Callable[[str], float]:
    return _parsed(
        name,
        float,
        "a number",
        lambda value: check_float(name, value, minimum=minimum, maximum=MAX_FLOAT32),
    )


def _positive_float(name: str, maximum: float) -> Callable[[str], float]:
    def check(value: float) -> float:
        positive = check_float(name, value, minimum=0.0, strict=True)
        return check_float(name, positive, maximum=maximum)

    return _parsed(name, float, "a number", check)


def _add_data_flags(command: argparse.ArgumentParser, default: str | None) -> None:
    from pynsm.data import DATASET_NAMES

    command.add_argument(
        "--dataset",
        default=default,
        metavar="{" + ",".join(DATASET_NAMES) + ",PATH}",
        help="a published dataset, evaluated on its standard test split "
        "(mnist: 60,000 train / 10,000 test); 'digits' (scikit-learn's 8x8, "
        "stratified 75/25 split); an image folder PATH/{train,test}/<class>/*.png; "
        "or a .npz file with train_images, train_labels, test_images, test_labels "
        "(split kept) or images [N, H, W] / [N, C, H, W] and integer labels [N] "
        "(stratified 75/25 split; the distinct labels, sorted, become classes "
        "0..K-1)",
    )
    command.add_argument(
        "--data-dir",
        metavar="DIR",
        help="folder of the published datasets, in torchvision's layout (e.g. "
        "DIR/MNIST/raw/train-images-idx3-ubyte[.gz]); default: $PYNSM_DATA, else "
        "~/.cache/pynsm",
    )
    command.add_argument(
        "--download",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="fetch a missing published dataset from its official address "
        "(checksummed; default: --no-download, a missing dataset is an error)",
    )
    command.add_argument("--device", help="e.g. cpu, cuda, cuda:1 (default: auto)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``pynsm`` command (``train`` and ``embed``)."""
    parser = _Parser(
        prog="pynsm",
        description="Similarity-matching circuits and SSL models, trained and "
        "evaluated on images (offline).",
    )
    commands = parser.add_subparsers(
        dest="command", required=True, parser_class=_Parser
    )
    train = commands.add_parser(
        "train",
        help="train a model, then report readout accuracies of its features",
        description="Train a model on a dataset, then report how well its features "
        "classify: k-shot and all-label linear probes and kNN, beside the same "
        "readouts of the untrained model and of the raw pixels.",
    )
    train.add_argument(
        "--model",
        choices=sorted(MODELS),
        default="supervised-sm",
        help="the model; its recipe (epochs, batch size, lr, architecture) is "
        "chosen from the image size: 'small' for images up to 16x16 (tuned on "
        "digits), 'large' above (MNIST- and CIFAR-sized, tuned on MNIST: sm 3 "
        "epochs; supervised-sm 4, its stroke detectors learning in the first "
        "and its supervised circuit in the other 3; msn, pmsn and swav on views "
        "of half the image side "
        "for 300,000 images seen, i.e. 5 epochs of MNIST and more epochs of a "
        "smaller set); the report and the checkpoint record which",
    )
    _add_data_flags(train, "digits")
    train.add_argument(
        "--epochs", type=_integer("--epochs", 0, MAX_COUNT), help="training epochs"
    )
    train.add_argument(
        "--batch-size",
        type=_integer("--batch-size", 1, MAX_COUNT),
        help="global batch size (split over torchrun processes)",
    )
    train.add_argument(
        "--lr",
        type=_positive_float("--lr", MAX_FLOAT32),
        help="learning rate (> 0, at most float32's largest number)",
    )
    train.add_argument(
        "--seed", type=_integer("--seed", 0, MAX_SEED), default=0, help="random seed"
    )
    train.add_argument(
        "--num-workers",
        type=_integer("--num-workers", 0, 256),
        default=0,
        help="DataLoader worker processes reading the training images (use them "
        "for image folders, which are decoded lazily)",
    )
    train.add_argument(
        "--train-subset",
        type=_integer("--train-subset", 2, MAX_COUNT),
        metavar="N",
        help="train on the first N training images only (quick checks; the test "
        "split is unchanged)",
    )
    train.add_argument(
        "--long-tail",
        type=_float_at_least("--long-tail", 1.0),
        metavar="RATIO",
        help="train on a long-tailed subset of the training split: power-law "
        "class counts, largest / smallest = RATIO (e.g. 100), a fixed seed; the "
        "test split stays balanced",
    )
    train.add_argument(
        "--checkpoint-dir", help="keep the latest training state in DIR/last.pt"
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue from DIR/last.pt (needs --checkpoint-dir)",
    )
    train.add_argument("--json", dest="json_path", help="write the metrics here")
    train.add_argument(
        "--no-progress", action="store_true", help="hide the progress bars"
    )
    embed = commands.add_parser(
        "embed",
        help="write the features of a trained model to an .npz file",
        description="Rebuild the model saved by 'pynsm train --checkpoint-dir DIR' "
        "and write train_features, train_labels, test_features and test_labels "
        "(float32 / int64 arrays, no pickles) for the same split.",
    )
    embed.add_argument("--checkpoint-dir", required=True, help="folder holding last.pt")
    embed.add_argument("--out", required=True, help="the .npz file to write")
    _add_data_flags(embed, None)
    embed.add_argument(
        "--batch-size",
        type=_integer("--batch-size", 1, MAX_COUNT),
        default=64,
        help="images embedded at once",
    )
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parsed arguments; :class:`UsageError` for anything argparse refuses."""
    return build_parser().parse_args(argv)


def fail(message: str) -> NoReturn:
    """Stop with a usage error (one line, exit status 2)."""
    raise UsageError(message)


def check_output_file(flag: str, path: str, *, suffix: str | None = None) -> None:
    """Fail now, not after the work, if ``path`` cannot be written.

    The folder is created if missing and probed by creating (and removing) a
    temporary file in it: permission bits alone do not tell (root ignores them,
    read-only mounts do not show them).
    """
    if suffix is not None and not path.endswith(suffix):
        fail(f"{flag} must name a {suffix} file, got {path!r}")
    if os.path.isdir(path):
        fail(f"{flag} {path!r} is a directory, not a file")
    probe_directory(flag, os.path.dirname(os.path.abspath(path)))
    if os.path.exists(path) and not os.access(path, os.W_OK):
        fail(f"{flag} {path!r} exists and is not writable")


def probe_directory(flag: str, folder: str) -> None:
    """Create ``folder`` if needed and check that a file can be written in it."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        fail(f"{flag}: {folder!r} is a file, not a directory")
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".pynsm-probe-"):
            pass
    except OSError as exc:
        fail(f"{flag}: cannot write in {folder!r} ({exc.strerror or exc})")
