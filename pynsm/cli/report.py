"""The closing text and the ``--json`` file of ``pynsm train``."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from typing import Any

__all__ = ["closing_text", "split_description", "write_json"]


def _percent(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def split_description(split: str, test_size: int, test_fraction: float = 0.25) -> str:
    """What the readouts were evaluated on, in words.

    Example:
        >>> split_description("standard", 10000)
        'standard test split, 10,000 images'
        >>> split_description("stratified", 450)
        'stratified 25% split, 450 images'
    """
    kind = (
        "standard test"
        if split == "standard"
        else (f"stratified {100 * test_fraction:.0f}%")
    )
    return f"{kind} split, {test_size:,} images"


def closing_text(result: Mapping[str, Any]) -> str:
    """A summary line and a table of readout accuracies (pixels, untrained, trained).

    Example:
        >>> print(closing_text({
        ...     "model": "sm", "recipe": "small", "dataset": "digits",
        ...     "evaluated_on": "stratified 25% split, 3 images",
        ...     "num_train": 9, "num_test": 3,
        ...     "epochs": 1, "world_size": 1, "train_seconds": 1.0,
        ...     "eval_seconds": 0.5, "history": [{"loss": 0.25}],
        ...     "pixel_fewshot_accuracy": {"1": 0.5}, "pixel_accuracy": 0.9,
        ...     "random_init_fewshot_accuracy": {"1": 0.6},
        ...     "random_init_accuracy": 0.9, "random_init_knn_accuracy": 0.8,
        ...     "fewshot_accuracy": {"1": 0.7}, "test_accuracy": 1.0,
        ...     "knn_accuracy": 0.9}))
        pynsm train: sm (small recipe) on digits (9 train / 3 test), 1 epochs, 1 process(es), 1.0 s training + 0.5 s evaluation; final loss 0.25
        evaluated on the stratified 25% split, 3 images
        readout of the features   pixels  random init  trained
        1-shot linear probe        50.0%        60.0%    70.0%
        all-label linear probe     90.0%        90.0%   100.0%
        kNN (k=20)                     -        80.0%    90.0%
    """  # noqa: E501
    history = result.get("history") or []
    last_loss = f"{history[-1]['loss']:.4g}" if history else "n/a"
    recipe = f" ({result['recipe']} recipe)" if result.get("recipe") else ""
    lines = [
        f"pynsm train: {result['model']}{recipe} on {result['dataset']} "
        f"({result['num_train']} train / {result['num_test']} test), "
        f"{result['epochs']} epochs, {result['world_size']} process(es), "
        f"{result['train_seconds']:.1f} s training + "
        f"{result['eval_seconds']:.1f} s evaluation; final loss {last_loss}"
    ]
    if result.get("long_tail") is not None:
        counts = ", ".join(str(n) for n in result.get("train_class_counts") or [])
        lines.append(
            f"trained on a long tail ({result['long_tail']:g}:1), images per class: "
            f"{counts}"
        )
    if result.get("evaluated_on"):
        lines.append(f"evaluated on the {result['evaluated_on']}")
    columns = ("pixel_", "random_init_", "")
    rows = [
        (f"{k}-shot linear probe", [f"{p}fewshot_accuracy" for p in columns], k)
        for k in (result.get("fewshot_accuracy") or {})
    ]
    rows.append(
        (
            "all-label linear probe",
            ["pixel_accuracy", "random_init_accuracy", "test_accuracy"],
            None,
        )
    )
    rows.append(
        (
            "kNN (k=20)",
            ["pixel_knn_accuracy", "random_init_knn_accuracy", "knn_accuracy"],
            None,
        )
    )
    if result.get("circuit_accuracy") is not None:
        rows.append(("circuit's own prediction", ["", "", "circuit_accuracy"], None))
    width = max(len(row[0]) for row in rows) + 2
    lines.append(f"{'readout of the features':<{width}}  pixels  random init  trained")
    for label, keys, shot in rows:
        values = []
        for key in keys:
            value = result.get(key) if key else None
            if shot is not None and isinstance(value, Mapping):
                value = value.get(shot)
            values.append(_percent(value))
        lines.append(f"{label:<{width}}{values[0]:>8}{values[1]:>13}{values[2]:>9}")
    return "\n".join(lines)


def write_json(path: str, result: Mapping[str, Any]) -> None:
    """Write ``result`` to ``path`` atomically (a temporary file, then a rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".pynsm-json-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(result, handle, indent=2)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
