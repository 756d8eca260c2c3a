"""Dataset, device and model set-up shared by ``pynsm train`` and ``pynsm embed``.

Everything here either succeeds or stops with a one-line :class:`UsageError`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from pynsm.cli.args import RunError, fail
from pynsm.cli.recipes import ModelSpec, select_recipe
from pynsm.data import ImageDatasetInfo, check_image_dataset
from pynsm.data.folder import ImageDecodeError

__all__ = [
    "SPLIT",
    "load_data",
    "dataset_record",
    "check_dataset",
    "take_subset",
    "take_long_tail",
    "class_counts",
    "resolve_device",
    "build_model",
    "cpu_threads",
    "first_images",
    "decode_error_line",
    "check_decodes",
]

#: The stratified split of datasets without their own (digits, an
#: ``images``/``labels`` .npz); recorded in checkpoints for ``embed``.
SPLIT = {"test_fraction": 0.25, "seed": 0}


def load_data(
    dataset: str, data_dir: str | None, download: bool, progress: bool = True
) -> tuple[Dataset, Dataset]:
    """The ``--dataset`` (:func:`pynsm.data.load_dataset`); one-line errors.

    Bad or missing data is a usage error (exit 2); a download that fails on the
    network or the disk is a :class:`RunError` (exit 1).
    """
    from pynsm.data import load_dataset

    if (
        data_dir is not None
        and os.path.exists(data_dir)
        and not os.path.isdir(data_dir)
    ):
        fail(f"--data-dir {data_dir!r} is a file, not a directory")
    try:
        return load_dataset(dataset, data_dir, download, progress=progress, **SPLIT)
    except FileNotFoundError as exc:
        missing = str(exc).replace("download=True (pynsm: --download)", "--download")
        fail(f"--dataset: {missing}")
    except (ValueError, ImportError) as exc:
        fail(f"--dataset: {_first_line(exc)}")
    except OSError as exc:
        raise RunError(f"--dataset {dataset}: {_first_line(exc)}") from exc


def dataset_record(dataset: str) -> str:
    """How the checkpoint names the dataset: a name, or an absolute path."""
    from pynsm.data import DATASET_NAMES

    return dataset if dataset in DATASET_NAMES else os.path.abspath(dataset)


def check_dataset(
    model: str, train: Dataset, test: Dataset
) -> tuple[str, ModelSpec, ImageDatasetInfo]:
    """The recipe for the dataset's image size, after checking the dataset suits it.

    Returns ``(recipe name, recipe, shape facts)``
    (:func:`pynsm.cli.recipes.select_recipe`).
    """
    try:
        info = check_image_dataset(train, test, min_classes=2)
    except (ValueError, TypeError) as exc:
        fail(f"--dataset: {exc}")
    recipe, spec = select_recipe(model, info.height, info.width)
    try:
        check_image_dataset(
            train,
            test,
            min_classes=2,
            min_size=spec.min_image_size,
            square=spec.square_images,
        )
    except ValueError as exc:
        fail(f"--model {model} cannot use this dataset: {exc}")
    return recipe, spec, info


def take_subset(data: Dataset, count: int | None) -> Dataset:
    """The first ``count`` items of ``data`` (all of them for ``None``)."""
    if count is None or count >= len(data):  # type: ignore[arg-type]
        return data
    return _items(data, torch.arange(count))


def take_long_tail(data: Dataset, imbalance: float | None) -> Dataset:
    """A power-law long tail of ``data``'s classes (``--long-tail``; see
    :func:`pynsm.data.long_tailed_indices`), or ``data`` itself for ``None``."""
    if imbalance is None:
        return data
    from pynsm.data import long_tailed_indices

    labels = _labels(data)
    try:
        kept = long_tailed_indices(labels.numpy(), imbalance)
    except ValueError as exc:
        fail(f"--long-tail {imbalance:g}: {exc}")
    return _items(data, torch.from_numpy(kept))


def class_counts(data: Dataset) -> list[int]:
    """Images per class of a labelled dataset, ``[num_classes]``."""
    return torch.bincount(_labels(data)).tolist()


def _labels(data: Dataset) -> torch.Tensor:
    if isinstance(data, TensorDataset):
        return data.tensors[1]
    return torch.as_tensor(data.targets)  # type: ignore[attr-defined]


def _items(data: Dataset, indices: torch.Tensor) -> Dataset:
    # the same kind of dataset, with its class names and split kept
    if isinstance(data, TensorDataset):
        subset = TensorDataset(*(tensor[indices] for tensor in data.tensors))
    else:
        subset = Subset(data, indices.tolist())
        subset.targets = _labels(data)[indices]  # type: ignore[attr-defined]
    for name in ("classes", "split"):
        if hasattr(data, name):
            setattr(subset, name, getattr(data, name))
    return subset


def check_decodes(datasets: tuple[Dataset, ...], num_workers: int = 0) -> None:
    """Decode every image of the lazy datasets once, so a bad file fails now.

    Loading an image folder reads only the files' headers; a file cut short
    after its header is found when its pixels are decoded. One pass over the
    folder here (with ``num_workers`` loader processes) turns that into a usage
    error before any output is written, instead of a failure mid-epoch. In-memory
    datasets were checked when they were read.
    """
    for data in datasets:
        if isinstance(data, TensorDataset):
            continue
        loader = DataLoader(data, batch_size=256, num_workers=num_workers)
        try:
            for _ in loader:
                pass
        except ImageDecodeError as exc:
            fail(f"--dataset: {decode_error_line(exc)}")


def decode_error_line(exc: BaseException) -> str:
    """The message of an image that failed to decode, without worker tracebacks.

    A ``DataLoader`` worker re-raises the error with the worker's traceback as
    its text; the last line holds the original message.
    """
    line = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
    return line.split("ImageDecodeError: ")[-1]


def first_images(data: Dataset, count: int = 2) -> torch.Tensor:
    """``[count, C, H, W]``: the first images, without reading a lazy dataset."""
    if isinstance(data, TensorDataset):
        return data.tensors[0][:count]
    return torch.stack([data[i][0] for i in range(min(count, len(data)))])


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
