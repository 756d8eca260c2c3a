"""The ``pynsm`` command: train a circuit or an SSL model on images and evaluate it.

``pynsm train`` trains the chosen model with :class:`pynsm.train.Trainer` (also
under ``torchrun``), then fits a logistic-regression readout on its features and
reports the test accuracy. Bad input prints one line to stderr and exits with 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, NoReturn

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["main", "build_parser", "MODELS"]


@dataclass(frozen=True)
class ModelSpec:
    """How the command builds, trains and reads out one model."""

    build: Callable[[int, int, int], nn.Module]  # (channels, image side, classes)
    optimizer: type[torch.optim.Optimizer]
    lr: float
    epochs: int
    batch_size: int
    probe_c: float  # inverse L2 strength of the logistic readout
    self_supervised: bool  # trained without labels
    cpu_threads: int | None = None  # torch threads on the CPU unless the user chose


def _conv_pool(y: torch.Tensor) -> torch.Tensor:
    # overlapping 3×3 max-pool of the circuit's feature maps: small shifts of a
    # stroke then light the same feature, which the linear readout needs
    return nn.functional.max_pool2d(y, kernel_size=3, stride=1)


def _supervised_sm(channels: int, side: int, classes: int) -> nn.Module:
    from pynsm.arch import SupervisedSimilarityMatching
    from pynsm.train import CircuitTask

    circuit = SupervisedSimilarityMatching(
        nn.Conv2d(channels, 50, 3, bias=False),
        num_classes=classes,
        out_channels=50,
        iteration_projection=nn.functional.relu,
    )
    return CircuitTask(circuit, num_classes=classes, feature_pool=_conv_pool)


def _sm(channels: int, side: int, classes: int) -> nn.Module:
    from pynsm.arch import SimilarityMatching
    from pynsm.train import CircuitTask

    circuit = SimilarityMatching(
        nn.Conv2d(channels, 50, 3, bias=False),
        out_channels=50,
        iteration_projection=nn.functional.relu,
    )
    return CircuitTask(circuit, feature_pool=_conv_pool)


def _msn(channels: int, side: int, classes: int) -> nn.Module:
    from pynsm.ssl.msn import MSN

    return MSN(in_channels=channels, image_size=side)


def _pmsn(channels: int, side: int, classes: int) -> nn.Module:
    from pynsm.ssl.msn import PMSN

    return PMSN(in_channels=channels, image_size=side)


def _swav(channels: int, side: int, classes: int) -> nn.Module:
    from pynsm.ssl.swav import SwaV

    return SwaV(in_channels=channels, image_size=side, queue_length=0)


MODELS: dict[str, ModelSpec] = {
    # circuits run 40 tiny inner iterations per batch: thread start-up costs more
    # than it saves (measured 6x faster on one thread on a busy 2-core machine)
    "supervised-sm": ModelSpec(
        _supervised_sm, torch.optim.SGD, 0.01, 10, 32, 0.1, False, cpu_threads=1
    ),
    "sm": ModelSpec(_sm, torch.optim.SGD, 0.01, 10, 32, 0.1, True, cpu_threads=1),
    "msn": ModelSpec(_msn, torch.optim.AdamW, 1e-3, 10, 64, 1.0, True),
    "pmsn": ModelSpec(_pmsn, torch.optim.AdamW, 1e-3, 10, 64, 1.0, True),
    "swav": ModelSpec(_swav, torch.optim.AdamW, 1e-3, 10, 64, 1.0, True),
}


class UsageError(Exception):
    """Bad command-line input: reported on one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage block
        raise UsageError(message)


def _number(kind: type, name: str, minimum: float, strict: bool) -> Callable:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} must be {'an integer' if kind is int else 'a number'}, "
                f"got {text!r}"
            ) from None
        if value != value or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(
                f"{name} must be {'>' if strict else '>='} {minimum}, got {text!r}"
            )
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``pynsm`` command."""
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
        help="train a model, then report the test accuracy of a linear readout",
        description="Train a model on a dataset, then fit a logistic-regression "
        "readout on its features and report the test accuracy.",
    )
    train.add_argument("--model", choices=sorted(MODELS), default="supervised-sm")
    train.add_argument(
        "--dataset",
        default="digits",
        help="'digits' (scikit-learn's, bundled) or a .npz file with 'images' "
        "[N, H, W] or [N, C, H, W] and 'labels' [N]",
    )
    train.add_argument(
        "--epochs", type=_number(int, "--epochs", 0, False), help="training epochs"
    )
    train.add_argument(
        "--batch-size",
        type=_number(int, "--batch-size", 0, True),
        help="global batch size (split over torchrun processes)",
    )
    train.add_argument("--lr", type=_number(float, "--lr", 0.0, True))
    train.add_argument("--seed", type=_number(int, "--seed", 0, False), default=0)
    train.add_argument("--device", help="e.g. cpu, cuda, cuda:1 (default: auto)")
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pynsm`` command; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        return _train(args)
    except UsageError as exc:
        if os.environ.get("RANK", "0") == "0":  # under torchrun: one line, not one each
            print(f"pynsm: error: {exc}", file=sys.stderr)
        return 2


def _fail(message: str) -> NoReturn:
    raise UsageError(message)


def _load_dataset(name: str) -> tuple[TensorDataset, TensorDataset]:
    from pynsm.data import load_digits, load_npz

    if name == "digits":
        try:
            return load_digits()
        except ImportError as exc:
            _fail(str(exc))
    if not name.endswith(".npz"):
        _fail(f"--dataset must be 'digits' or a .npz file, got {name!r}")
    try:
        return load_npz(name)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))


def _device(text: str | None) -> torch.device:
    from pynsm.train.launch import default_device

    if text is None:
        return default_device()
    try:
        device = torch.device(text)
    except RuntimeError:
        _fail(f"--device: unknown device {text!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        _fail(f"--device {text}: CUDA is not available")
    if device.type not in ("cpu", "cuda"):
        _fail(f"--device must be cpu or cuda, got {text!r}")
    return device


def _train(args: argparse.Namespace) -> int:
    from pynsm.eval import extract_embeddings, linear_probe_accuracy
    from pynsm.train import CheckpointError, Trainer, load_checkpoint
    from pynsm.train.launch import init_distributed_from_env

    spec = MODELS[args.model]
    if args.resume and not args.checkpoint_dir:
        _fail("--resume needs --checkpoint-dir")
    checkpoint = (
        os.path.join(args.checkpoint_dir, "last.pt") if args.checkpoint_dir else None
    )
    if args.resume and not os.path.isfile(checkpoint):
        _fail(f"--resume: nothing to resume, no checkpoint at {checkpoint}")
    if args.resume:
        try:  # fail before any work; the trainer loads it again to resume
            load_checkpoint(checkpoint)
        except CheckpointError as exc:
            _fail(str(exc))
    device = _device(args.device)
    train_set, test_set = _load_dataset(args.dataset)
    images = train_set.tensors[0]
    channels, height, width = images.shape[1:]
    if height != width and args.model in ("msn", "pmsn", "swav"):
        _fail(f"--model {args.model} needs square images, got {height}x{width}")
    classes = int(torch.cat([train_set.tensors[1], test_set.tensors[1]]).max()) + 1

    owns_group = init_distributed_from_env()
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    batch_size = args.batch_size or spec.batch_size
    if batch_size < world:
        _fail(f"--batch-size {batch_size} is smaller than the {world} processes")
    epochs = spec.epochs if args.epochs is None else args.epochs
    lr = args.lr or spec.lr
    show = not args.no_progress and rank == 0
    if (
        device.type == "cpu"
        and spec.cpu_threads is not None
        and "OMP_NUM_THREADS" not in os.environ
    ):
        torch.set_num_threads(spec.cpu_threads)
    try:
        torch.manual_seed(args.seed)
        try:
            task = spec.build(int(channels), int(height), classes)
        except ValueError as exc:
            _fail(f"--model {args.model} does not fit this dataset: {exc}")
        task.to(device)

        def readout() -> float:
            def features(data: TensorDataset) -> Any:
                loader = DataLoader(data, batch_size=256)
                return extract_embeddings(task, loader, method="embed")

            train_emb, test_emb = features(train_set), features(test_set)
            return linear_probe_accuracy(
                train_emb.output,
                train_emb.label,
                test_emb.output,
                test_emb.label,
                C=spec.probe_c,
            )

        # the same readout on the untrained model: how much training adds
        random_init = readout() if rank == 0 else None
        torch.manual_seed(args.seed + rank)  # augmentations differ between processes
        trainer = Trainer(
            task,
            epochs=epochs,
            batch_size=max(batch_size // world, 1),
            optimizer=spec.optimizer,
            lr=lr,
            device=device,
            checkpoint_path=checkpoint,
            seed=args.seed,
            progress=show,
        )
        start = time.perf_counter()
        try:
            history = trainer.fit(train_set, resume=args.resume)
        except (CheckpointError, FileNotFoundError) as exc:
            _fail(str(exc))
        train_seconds = time.perf_counter() - start
        if rank != 0:
            return 0
        accuracy = readout()
    finally:
        if owns_group:
            dist.destroy_process_group()

    result: dict[str, Any] = {
        "model": args.model,
        "self_supervised": spec.self_supervised,
        "dataset": args.dataset,
        "test_accuracy": accuracy,
        "history": history,
        "train_seconds": train_seconds,
        "world_size": world,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": args.seed,
        "device": str(device),
        "num_train": len(train_set),
        "num_test": len(test_set),
    }
    if random_init is not None:
        result["random_init_accuracy"] = random_init
    last_loss = f"{history[-1]['loss']:.4g}" if history else "n/a"
    print(
        f"pynsm train: {args.model} on {args.dataset} ({len(train_set)} train / "
        f"{len(test_set)} test), {epochs} epochs, {world} process(es), "
        f"{train_seconds:.1f} s; final loss {last_loss}; "
        f"test accuracy {100 * accuracy:.2f}%"
        + (
            f" (random init {100 * random_init:.2f}%)"
            if random_init is not None
            else ""
        )
    )
    if args.json_path:
        folder = os.path.dirname(os.path.abspath(args.json_path))
        os.makedirs(folder, exist_ok=True)
        with open(args.json_path, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0
