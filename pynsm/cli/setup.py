"""Dataset, device and model set-up shared by ``pynsm train`` and ``pynsm embed``.

Everything here either succeeds or stops with a one-line :class:`UsageError`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.data import TensorDataset

from pynsm.cli.args import fail
from pynsm.cli.recipes import ModelSpec
from pynsm.data import ImageDatasetInfo, check_image_dataset

__all__ = [
    "SPLIT",
    "load_dataset",
    "check_dataset",
    "resolve_device",
    "build_model",
    "cpu_threads",
]

#: The train/test split of every dataset (recorded in checkpoints for ``embed``).
SPLIT = {"test_fraction": 0.25, "seed": 0}


def load_dataset(name: str) -> tuple[TensorDataset, TensorDataset]:
    """The ``--dataset``: ``'digits'`` or a ``.npz`` file, split by :data:`SPLIT`."""
    from pynsm.data import load_digits, load_npz

    if name == "digits":
        try:
            return load_digits(**SPLIT)
        except ImportError as exc:
            fail(str(exc))
    if not name.endswith(".npz"):
        fail(f"--dataset must be 'digits' or a .npz file, got {name!r}")
    try:
        return load_npz(name, **SPLIT)
    except (FileNotFoundError, ValueError) as exc:
        fail(f"--dataset: {exc}")


def check_dataset(
    model: str, spec: ModelSpec, train: TensorDataset, test: TensorDataset
) -> ImageDatasetInfo:
    """Shape facts of the dataset, after checking it suits ``--model``."""
    try:
        return check_image_dataset(
            train,
            test,
            min_classes=2,
            min_size=spec.min_image_size,
            square=spec.square_images,
        )
    except ValueError as exc:
        fail(f"--model {model} cannot use this dataset: {exc}")


def resolve_device(text: str | None) -> torch.device:
    """The ``--device`` (default: CUDA if available, else the CPU)."""
    from pynsm.train.launch import default_device

    if text is None:
        return default_device()
    try:
        device = torch.device(text)
    except RuntimeError:
        fail(f"--device: unknown device {text!r}")
    if device.type not in ("cpu", "cuda"):
        fail(f"--device must be cpu or cuda, got {text!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        fail(f"--device {text}: CUDA is not available")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        fail(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


def build_model(
    model: str, spec: ModelSpec, info: ImageDatasetInfo, sample: torch.Tensor
) -> nn.Module:
    """Build the task and embed ``sample`` once, so a misfit fails before training.

    The trial runs in eval mode without gradients and with the RNG state saved and
    restored: it changes neither the model (no batch-norm statistics, no queues)
    nor the random stream of the run.
    """
    try:
        task = spec.build(info.channels, info.height, info.num_classes)
    except ValueError as exc:
        fail(f"--model {model} does not fit this dataset: {_first_line(exc)}")
    was_training = task.training
    task.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            features = task.embed(sample)
    except (RuntimeError, ValueError, IndexError) as exc:
        fail(
            f"--model {model} does not fit {info.channels}x{info.height}x{info.width}"
            f" images: {_first_line(exc)}"
        )
    finally:
        task.train(was_training)
    if features.dim() < 2 or len(features) != len(sample):
        fail(f"--model {model}: embed() gave features of shape {tuple(features.shape)}")
    return task


@contextlib.contextmanager
def cpu_threads(spec: ModelSpec, device: torch.device) -> Iterator[None]:
    """Use the recipe's CPU thread count for the run, and restore it afterwards.

    Only on the CPU, and not when the user chose with ``OMP_NUM_THREADS``.
    """
    before = torch.get_num_threads()
    wanted = spec.cpu_threads
    if (
        device.type == "cpu"
        and wanted is not None
        and "OMP_NUM_THREADS" not in os.environ
    ):
        torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
