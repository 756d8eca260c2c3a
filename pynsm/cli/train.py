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
from torch.utils.data import TensorDataset

from pynsm.cli import evaluate
from pynsm.cli.args import (
    RunError,
    UsageError,
    check_output_file,
    fail,
    probe_directory,
)
from pynsm.cli.recipes import MODELS, ModelSpec
from pynsm.cli.report import closing_text, write_json
from pynsm.cli.setup import (
    SPLIT,
    build_model,
    check_dataset,
    cpu_threads,
    load_dataset,
    resolve_device,
)
from pynsm.data import ImageDatasetInfo

__all__ = ["run"]


@dataclass
class Plan:
    """Everything a checked ``pynsm train`` run needs."""

    args: argparse.Namespace
    spec: ModelSpec
    device: torch.device
    train_set: TensorDataset
    test_set: TensorDataset
    info: ImageDatasetInfo
    checkpoint: str | None
    epochs: int
    batch_size: int
    lr: float
    world: int
    rank: int


def run(args: argparse.Namespace) -> int:
    """Run ``pynsm train``; returns the exit status."""
    spec = MODELS[args.model]
    device = resolve_device(args.device)
    with cpu_threads(spec, device):
        plan = make_plan(args, spec, device)
        torch.manual_seed(args.seed)
        task = build_model(
            args.model, spec, plan.info, plan.train_set.tensors[0][:2]
        ).to(device)
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


def make_plan(args: argparse.Namespace, spec: ModelSpec, device: torch.device) -> Plan:
    """Check flags, checkpoint, dataset and output paths, in that order."""
    checkpoint = _check_resume(args)
    train_set, test_set = load_dataset(args.dataset)
    info = check_dataset(args.model, spec, train_set, test_set)
    if args.resume:
        _check_resume_fits(args, checkpoint, info)
    world, rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0)
    batch_size = args.batch_size or spec.batch_size
    if batch_size < world:
        fail(f"--batch-size {batch_size} is smaller than the {world} processes")
    return Plan(
        args=args,
        spec=spec,
        device=device,
        train_set=train_set,
        test_set=test_set,
        info=info,
        checkpoint=checkpoint,
        epochs=spec.epochs if args.epochs is None else args.epochs,
        batch_size=batch_size,
        lr=args.lr or spec.lr,
        world=world,
        rank=rank,
    )


def check_outputs(args: argparse.Namespace) -> None:
    """Probe ``--json`` and ``--checkpoint-dir`` for writing (creating folders)."""
    if args.json_path:
        check_output_file("--json", args.json_path)
    if args.checkpoint_dir:
        probe_directory("--checkpoint-dir", args.checkpoint_dir)


def fit(plan: Plan, task: nn.Module) -> tuple[list[dict[str, Any]], float, float]:
    """Train; returns the history, training seconds and per-epoch metric seconds."""
    from pynsm.train import CheckpointError, Trainer, TrainingDiverged

    args, spec = plan.args, plan.spec
    metric_seconds = [0.0]
    knn = evaluate.epoch_knn(plan.train_set, plan.test_set)

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
    except (CheckpointError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from exc
    except OSError as exc:  # a full disk or a vanished folder while saving
        raise RunError(
            f"could not write the checkpoint {plan.checkpoint}: {exc.strerror or exc}"
        ) from exc
    seconds = time.perf_counter() - start - metric_seconds[0]
    return history, seconds, metric_seconds[0]


def checkpoint_metadata(plan: Plan) -> dict[str, Any]:
    """What ``pynsm embed`` needs to rebuild the model and the split."""
    args, info = plan.args, plan.info
    dataset = args.dataset
    if dataset != "digits":
        dataset = os.path.abspath(dataset)
    return {
        "command": "pynsm train",
        "model": args.model,
        "image_shape": [info.channels, info.height, info.width],
        "num_classes": info.num_classes,
        "dataset": dataset,
        "split": dict(SPLIT),
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
        }
    )
    print(closing_text(result), flush=True)
    if args.json_path:
        try:
            write_json(args.json_path, result)
        except OSError as exc:
            raise RunError(
                f"could not write --json {args.json_path}: {exc.strerror or exc}"
            ) from exc


def _record_baselines(result: dict[str, Any], plan: Plan, task: nn.Module) -> None:
    pixels = evaluate.pixel_readouts(plan.train_set, plan.test_set, plan.spec.probe_c)
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
    args: argparse.Namespace, checkpoint: str | None, info: ImageDatasetInfo
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
