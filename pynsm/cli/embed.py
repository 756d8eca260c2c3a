"""``pynsm embed``: the features of a trained model, written to an ``.npz`` file.

The model is rebuilt from the metadata that ``pynsm train --checkpoint-dir DIR``
stores in ``DIR/last.pt`` (model name, recipe, image shape, number of classes,
dataset and data folder), with the recipe the training run used; its weights are
loaded, and the features of the same train/test split are written as
``train_features`` / ``test_features`` (float32 ``[N, D]``) and ``train_labels`` /
``test_labels`` (int64 ``[N]``) with :func:`numpy.savez`: plain arrays that load
with ``allow_pickle=False``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from typing import Any

import numpy as np
import torch

from pynsm.cli import evaluate
from pynsm.cli.args import RunError, UsageError, check_output_file, fail
from pynsm.cli.recipes import MODELS
from pynsm.cli.setup import (
    build_model,
    check_dataset,
    check_decodes,
    cpu_threads,
    decode_error_line,
    first_images,
    load_data,
    resolve_device,
    take_long_tail,
    take_subset,
)
from pynsm.data.folder import ImageDecodeError

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    """Run ``pynsm embed``; returns the exit status."""
    try:
        return _run(args)
    except ImageDecodeError as exc:  # an image of a folder that would not decode
        raise UsageError(f"--dataset: {decode_error_line(exc)}") from exc


def _run(args: argparse.Namespace) -> int:
    check_output_file("--out", args.out, suffix=".npz")
    device = resolve_device(args.device)
    path = os.path.join(args.checkpoint_dir, "last.pt")
    state = _load(path)
    metadata = state["metadata"]
    name = metadata["model"]
    train_set, test_set = load_data(
        args.dataset or metadata["dataset"],
        args.data_dir or metadata.get("data_dir"),
        args.download,
    )
    train_set = take_long_tail(train_set, metadata.get("long_tail"))
    train_set = take_subset(train_set, metadata.get("train_subset"))
    recipe, spec, info = check_dataset(name, train_set, test_set)
    check_decodes((train_set, test_set))
    saved_recipe = metadata.get("recipe")
    if saved_recipe is not None and saved_recipe != recipe:
        fail(
            f"{path} was trained with the {saved_recipe!r} recipe of --model {name}; "
            f"this dataset's images get the {recipe!r} one"
        )
    with cpu_threads(spec, device):
        shape = [info.channels, info.height, info.width]
        if shape != list(metadata["image_shape"]):
            fail(
                f"the dataset's images are {shape} but {path} was trained on "
                f"{list(metadata['image_shape'])}"
            )
        if info.num_classes > int(metadata["num_classes"]):
            fail(
                f"the dataset has {info.num_classes} classes but {path} was trained "
                f"with {metadata['num_classes']}"
            )
        info = type(info)(*shape, int(metadata["num_classes"]))
        task = build_model(name, spec, info, first_images(train_set))
        try:
            task.load_state_dict(state["model"])
        except (RuntimeError, KeyError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0]
            fail(f"{path} does not fit --model {name} as built now: {first}")
        task.to(device)
        arrays = _features(task, train_set, test_set, args.batch_size)
    _save(args.out, arrays)
    print(
        f"pynsm embed: {name} features of {len(train_set)} train / {len(test_set)} "
        f"test images ({arrays['train_features'].shape[1]} per image) -> {args.out}"
    )
    return 0


def _load(path: str) -> dict[str, Any]:
    from pynsm.train import CheckpointError, load_checkpoint

    if not os.path.isfile(path):
        fail(f"--checkpoint-dir: no checkpoint at {path}")
    try:
        state = load_checkpoint(path)
    except CheckpointError as exc:
        fail(str(exc))
    metadata = state.get("metadata") or {}
    if metadata.get("command") != "pynsm train" or "model" not in state:
        fail(
            f"{path} was not written by 'pynsm train --checkpoint-dir' (it has no "
            "record of the model to rebuild)"
        )
    keys = {"model", "image_shape", "num_classes", "dataset"}
    if not keys <= set(metadata) or metadata["model"] not in MODELS:
        fail(f"{path} records a model this version cannot rebuild: {metadata!r:.200}")
    return state


def _features(
    task: torch.nn.Module, train_set: Any, test_set: Any, batch_size: int
) -> dict[str, Any]:
    arrays = {}
    for split, data in (("train", train_set), ("test", test_set)):
        features, labels = evaluate.embed(task, data, batch_size)
        arrays[f"{split}_features"] = features.numpy().astype(np.float32, copy=False)
        arrays[f"{split}_labels"] = labels.numpy().astype(np.int64, copy=False)
    return arrays


def _save(path: str, arrays: dict[str, Any]) -> None:
    # a temporary file, then a rename: a failed write leaves no half-written .npz
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".pynsm-embed-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp, path)
    except OSError as exc:
        raise RunError(f"could not write --out {path}: {exc.strerror or exc}") from exc
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
