"""``pynsm train``: check everything, train, read the features out, report.

The steps, each a short function: :func:`make_plan` validates the flags, the dataset
and the checkpoint to resume, the model is built and tried on two images, and
:func:`check_outputs` probes the output paths (nothing is trained or written if
any check fails); :func:`fit` trains with :class:`pynsm.train.Trainer` (also under
``torchrun``); :func:`evaluate_run` reads out the features; :func:`report`
prints the closing table and writes the JSON file.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset, TensorDataset

from pynsm.cli import evaluate
from pynsm.cli.args import (
    RunError,
    UsageError,
    check_output_file,
    fail,
    probe_directory,
)
from pynsm.cli.recipes import ModelSpec
from pynsm.cli.report import closing_text, split_description, write_json
from pynsm.cli.setup import (
    SPLIT,
    build_model,
    check_dataset,
    check_decodes,
    class_counts,
    cpu_threads,
    dataset_record,
    decode_error_line,
    first_images,
    load_data,
    resolve_device,
    take_long_tail,
    take_subset,
)
from pynsm.data import ImageDatasetInfo
from pynsm.data.folder import ImageDecodeError

__all__ = ["run"]


@dataclass
class Plan:
    """Everything a checked ``pynsm train`` run needs."""

    args: argparse.Namespace
    recipe: str
    spec: ModelSpec
    device: torch.device
    train_set: Dataset
    test_set: Dataset
    split: str
    info: ImageDatasetInfo
    checkpoint: str | None
    epochs: int
    batch_size: int
    lr: float
    world: int
    rank: int


def run(args: argparse.Namespace) -> int:
    """Run ``pynsm train``; returns the exit status."""
    try:
        return _run(args)
    except ImageDecodeError as exc:  # an image of a folder that would not decode
        raise UsageError(f"--dataset: {decode_error_line(exc)}") from exc


def _run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    plan = make_plan(args, device)  # the recipe depends on the data's image size
    with cpu_threads(plan.spec, device):
        torch.manual_seed(args.seed)
        task = build_model(
            args.model, plan.spec, plan.info, first_images(plan.train_set)
        ).to(device)
        check_layerwise_epochs(args.model, task, plan.epochs)
        check_outputs(args)  # last: folders are created only once all else passed
        result: dict[str, Any] = {"eval_seconds": 0.0}
        if plan.rank == 0:  # the same readouts before training: what it adds
            _timed(result, lambda: _record_baselines(result, plan, task))
        history, train_seconds, metric_seconds = fit(plan, task)
        if plan.rank != 0:
            return 0
        result["eval_seconds"] += metric_seconds
        _timed(result, lambda: evaluate_run(result, plan, task))
        report(result, plan, history, train_seconds)
    return 0


def make_plan(args: argparse.Namespace, device: torch.device) -> Plan:
    """Check flags, checkpoint and dataset, choose the recipe for the data."""
    checkpoint = _check_resume(args)
    world, rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0)
    train_set, test_set = load_data(
        args.dataset,
        args.data_dir,
        args.download,
        progress=not args.no_progress and rank == 0,
    )
    split = getattr(test_set, "split", "stratified")
    train_set = take_subset(
        take_long_tail(train_set, args.long_tail), args.train_subset
    )
    recipe, spec, info = check_dataset(args.model, train_set, test_set)
    check_decodes((train_set, test_set), args.num_workers)
    if args.resume:
        _check_resume_fits(args, checkpoint, info, recipe)
    batch_size = args.batch_size or spec.batch_size
    if batch_size < world:
        fail(f"--batch-size {batch_size} is smaller than the {world} processes")
    return Plan(
        args=args,
        recipe=recipe,
        spec=spec,
        device=device,
        train_set=train_set,
        test_set=test_set,
        split=split,
        info=info,
        checkpoint=checkpoint,
        epochs=spec.default_epochs(len(train_set))
        if args.epochs is None
        else args.epochs,
        batch_size=batch_size,
        lr=args.lr or spec.lr,
        world=world,
        rank=rank,
    )


def check_layerwise_epochs(model: str, task: nn.Module, epochs: int) -> None:
    """A recipe whose layers learn one after the other needs an epoch for its top
    layer (see :class:`~pynsm.train.CircuitStack`'s ``layerwise``)."""
    layerwise = getattr(task, "layerwise", None)
    if layerwise and 0 < epochs <= sum(layerwise):  # 0: no training at all
        fail(
            f"--epochs {epochs}: --model {model} trains its layers one after the "
            f"other (epochs of the layers below the top: {list(layerwise)}) and "
            f"needs more than {sum(layerwise)} epochs"
        )


def check_outputs(args: argparse.Namespace) -> None:
    """Probe ``--json`` and ``--checkpoint-dir`` for writing (creating folders)."""
    if args.json_path:
        check_output_file("--json", args.json_path)
    if args.checkpoint_dir:
        probe_directory("--checkpoint-dir", args.checkpoint_dir)


def fit(plan: Plan, task: nn.Module) -> tuple[list[dict[str, Any]], float, float]:
    """Train; returns the history, training seconds and per-epoch metric seconds."""
    from pynsm.train import (
        CheckpointError,
        ResumeSettingsError,
        Trainer,
        TrainingDiverged,
    )

    args, spec = plan.args, plan.spec
    metric_seconds = [0.0]
    knn = evaluate.epoch_knn(
        _evenly_spaced(plan.train_set, evaluate.EPOCH_KNN_TRAIN),
        _evenly_spaced(plan.test_set, evaluate.EPOCH_KNN_TEST),
    )

    def epoch_metrics(model: nn.Module) -> dict[str, float]:
        start = time.perf_counter()
        values = dict(knn(model))
        metric_seconds[0] += time.perf_counter() - start
        return values

    torch.manual_seed(args.seed + plan.rank)  # augmentations differ by process
    trainer = Trainer(
        task,
        epochs=plan.epochs,
        batch_size=max(plan.batch_size // plan.world, 1),
        optimizer=_optimizer(spec, plan.lr),
        scheduler=_scheduler(spec, plan),
        scheduler_interval="step",
        grad_clip_norm=spec.grad_clip_norm,
        device=plan.device,
        # layers that rest in greedy layer-wise training get no gradient
        find_unused_parameters=getattr(task, "layerwise", None) is not None,
        num_workers=args.num_workers,
        checkpoint_path=plan.checkpoint,
        seed=args.seed,
        progress=not args.no_progress and plan.rank == 0,
        epoch_metrics=epoch_metrics,
        checkpoint_metadata=checkpoint_metadata(plan),
    )
    start = time.perf_counter()
    try:
        history = trainer.fit(plan.train_set, resume=args.resume)
    except TrainingDiverged as exc:
        kept = (
            f"; the last good checkpoint is {exc.checkpoint_path}"
            if (exc.checkpoint_path and os.path.exists(exc.checkpoint_path))
            else ""
        )
        raise RunError(f"training diverged: {exc}{kept}") from exc
    except ResumeSettingsError as exc:  # the data order would differ: refused
        raise UsageError(_resume_mismatch(exc.settings)) from exc
    except (CheckpointError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from exc
    except OSError as exc:  # a full disk or a vanished folder while saving
        raise RunError(
            f"could not write the checkpoint {plan.checkpoint}: {exc.strerror or exc}"
        ) from exc
    seconds = time.perf_counter() - start - metric_seconds[0]
    return history, seconds, metric_seconds[0]


#: How the command names the settings a resume must keep.
_RESUME_SETTINGS = {
    "seed": "--seed",
    "batch_size": "batch size per process",
    "world_size": "number of processes",
}


def _resume_mismatch(settings: dict[str, tuple[Any, Any]]) -> str:
    differences = ", ".join(
        f"{_RESUME_SETTINGS.get(name, name)} {saved} (now {now})"
        for name, (saved, now) in settings.items()
    )
    return (
        f"--resume: the checkpoint was trained with {differences}; resume with the "
        "same settings (the data order depends on them), or start a new "
        "--checkpoint-dir"
    )


def checkpoint_metadata(plan: Plan) -> dict[str, Any]:
    """What ``pynsm embed`` needs to rebuild the model (same recipe) and the split."""
    args, info = plan.args, plan.info
    return {
        "command": "pynsm train",
        "model": args.model,
        "recipe": plan.recipe,
        "image_shape": [info.channels, info.height, info.width],
        "num_classes": info.num_classes,
        "dataset": dataset_record(args.dataset),
        "data_dir": None if args.data_dir is None else os.path.abspath(args.data_dir),
        "split": dict(SPLIT) if plan.split == "stratified" else "standard",
        "train_subset": args.train_subset,
        "long_tail": args.long_tail,
        "settings": {
            "epochs": plan.epochs,
            "batch_size": plan.batch_size,
            "lr": plan.lr,
            "seed": args.seed,
        },
    }


def evaluate_run(result: dict[str, Any], plan: Plan, task: nn.Module) -> None:
    """Readouts of the trained model (and its own prediction, if it has one)."""
    _store(result, "", _model_readouts(plan, task), linear_key="test_accuracy")
    circuit = evaluate.circuit_accuracy(task, plan.test_set)
    if circuit is not None:
        result["circuit_accuracy"] = circuit


def report(
    result: dict[str, Any],
    plan: Plan,
    history: list[dict[str, Any]],
    train_seconds: float,
) -> None:
    """Print the closing text and write ``--json``."""
    args = plan.args
    result.update(
        {
            "model": args.model,
            "self_supervised": plan.spec.self_supervised,
            "dataset": args.dataset,
            "recipe": plan.recipe,
            "split": plan.split,
            "evaluated_on": split_description(plan.split, len(plan.test_set)),
            "train_size": len(plan.train_set),
            "test_size": len(plan.test_set),
            "image_shape": [plan.info.channels, plan.info.height, plan.info.width],
            "history": history,
            "train_seconds": train_seconds,
            "world_size": plan.world,
            "epochs": plan.epochs,
            "batch_size": plan.batch_size,
            "lr": plan.lr,
            "seed": args.seed,
            "device": str(plan.device),
            "num_train": len(plan.train_set),
            "num_test": len(plan.test_set),
            "num_classes": plan.info.num_classes,
            "long_tail": args.long_tail,
        }
    )
    if args.long_tail is not None:
        result["train_class_counts"] = class_counts(plan.train_set)
    print(closing_text(result), flush=True)
    if args.json_path:
        try:
            write_json(args.json_path, result)
        except OSError as exc:
            raise RunError(
                f"could not write --json {args.json_path}: {exc.strerror or exc}"
            ) from exc


def _record_baselines(result: dict[str, Any], plan: Plan, task: nn.Module) -> None:
    pixels = evaluate.pixel_readouts(
        _in_memory(plan.train_set), _in_memory(plan.test_set), plan.spec.probe_c
    )
    _store(result, "pixel_", pixels, linear_key="pixel_accuracy")
    untrained = _model_readouts(plan, task)
    _store(result, "random_init_", untrained, linear_key="random_init_accuracy")


def _model_readouts(plan: Plan, task: nn.Module) -> dict[str, Any]:
    """k-shot, all-label and kNN readouts of the task's features on the split."""
    return evaluate.readouts(
        evaluate.embed(task, plan.train_set),
        evaluate.embed(task, plan.test_set),
        plan.spec.probe_c,
    )


def _store(
    result: dict[str, Any], prefix: str, readouts: dict[str, Any], linear_key: str
) -> None:
    # the all-label probe keeps its historical key (test_accuracy for the model)
    result[f"{prefix}fewshot_accuracy"] = readouts["fewshot"]
    result[linear_key] = readouts["linear"]
    result[f"{prefix}knn_accuracy"] = readouts["knn"]


class _Pixels(nn.Module):
    """The raw pixels as features: streams a lazy dataset into ``[N, C*H*W]``."""

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def _in_memory(data: Dataset) -> TensorDataset:
    """``data`` itself if in memory; else its flattened pixels, read in batches.

    An image folder is decoded once here, into one ``[N, C*H*W]`` float32 array:
    the size of the features every readout holds anyway.
    """
    if isinstance(data, TensorDataset):
        return data
    return TensorDataset(*evaluate.embed(_Pixels(), data))


def _evenly_spaced(data: Dataset, limit: int) -> Dataset:
    """At most ``limit`` evenly spaced items of a lazy dataset (tensors: as is).

    The per-epoch kNN subsets tensors itself; a lazy dataset is subset here so
    that it reads only those images.
    """
    if isinstance(data, TensorDataset) or len(data) <= limit:  # type: ignore[arg-type]
        return data
    index = torch.linspace(0, len(data) - 1, limit).long().tolist()  # type: ignore[arg-type]
    return Subset(data, index)


def _timed(result: dict[str, Any], work: Any) -> None:
    start = time.perf_counter()
    work()
    result["eval_seconds"] += time.perf_counter() - start


def _check_resume(args: argparse.Namespace) -> str | None:
    if args.resume and not args.checkpoint_dir:
        fail("--resume needs --checkpoint-dir")
    if not args.checkpoint_dir:
        return None
    checkpoint = os.path.join(args.checkpoint_dir, "last.pt")
    if args.resume and not os.path.isfile(checkpoint):
        fail(f"--resume: nothing to resume, no checkpoint at {checkpoint}")
    return checkpoint


def _check_resume_fits(
    args: argparse.Namespace,
    checkpoint: str | None,
    info: ImageDatasetInfo,
    recipe: str,
) -> None:
    from pynsm.train import CheckpointError, load_checkpoint

    assert checkpoint is not None
    try:  # fail before any work; the trainer loads it again to resume
        metadata = load_checkpoint(checkpoint).get("metadata") or {}
    except CheckpointError as exc:
        fail(str(exc))
    model = metadata.get("model")
    if model is not None and model != args.model:
        fail(
            f"--resume: {checkpoint} was trained with --model {model}, not {args.model}"
        )
    saved_recipe = metadata.get("recipe")
    if saved_recipe is not None and saved_recipe != recipe:
        fail(
            f"--resume: {checkpoint} was trained with the {saved_recipe!r} recipe; "
            f"this dataset's images get the {recipe!r} one"
        )
    shape = metadata.get("image_shape")
    here = [info.channels, info.height, info.width]
    if shape is not None and list(shape) != here:
        fail(
            f"--resume: {checkpoint} was trained on images of shape {shape}, "
            f"this dataset has {here}"
        )


def _optimizer(spec: ModelSpec, lr: float) -> Any:
    def build(params: Any) -> torch.optim.Optimizer:
        return spec.optimizer(params, lr=lr, **dict(spec.optimizer_kwargs))

    return build


def _scheduler(spec: ModelSpec, plan: Plan) -> Any:
    if spec.scheduler is None:
        return None
    per_process = max(plan.batch_size // plan.world, 1)
    shard = -(-len(plan.train_set) // plan.world)
    steps_per_epoch = -(-shard // per_process)

    def build(optimizer: torch.optim.Optimizer) -> Any:
        return spec.scheduler(optimizer, plan.epochs, steps_per_epoch)

    return build


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default
