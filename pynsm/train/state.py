"""Check a loaded training state against a trainer before anything is applied.

:meth:`pynsm.train.Trainer.load_checkpoint` is all-or-nothing: this module finds
every reason a checkpoint cannot be restored (missing or mistyped fields, another
model, another optimizer class, tensors of the wrong shape, unusable RNG states)
and reports the first one as a one-line :class:`~pynsm.train.CheckpointError`.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from pynsm.train.errors import CheckpointError
from pynsm.train.rng import get_rng_state, set_rng_state

__all__ = ["qualified_name", "check_metadata", "validate_training_state"]

_EXTRA_STATE_SUFFIX = "_extra_state"
# optimizer settings that torch added over its versions: their absence says nothing
_VERSION_DEPENDENT = {
    "foreach",
    "maximize",
    "capturable",
    "differentiable",
    "fused",
    "decoupled_weight_decay",
}


def qualified_name(obj: object) -> str:
    """``module.QualifiedName`` of ``obj``'s class (stored to recognise it later)."""
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def check_metadata(metadata: Any, name: str = "checkpoint_metadata") -> dict:
    """``metadata`` as a dict of JSON-like values (what ``weights_only`` loads).

    Allowed: ``str``/``int``/``float``/``bool``/``None`` and lists/dicts of them
    (dict keys: ``str``). Tuples become lists.

    Raises:
        TypeError: anything else, naming the offending entry.

    Example:
        >>> check_metadata({"model": "sm", "shape": (1, 8, 8)})
        {'model': 'sm', 'shape': [1, 8, 8]}
    """
    if not isinstance(metadata, Mapping):
        raise TypeError(f"{name} must be a mapping, got {type(metadata).__name__}")
    return _plain(dict(metadata), name)


def _plain(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: keys must be str, got {key!r}")
            out[key] = _plain(item, f"{where}[{key!r}]")
        return out
    raise TypeError(
        f"{where} must hold only str, int, float, bool, None, lists and dicts, got "
        f"{type(value).__name__}"
    )


def validate_training_state(
    state: Mapping[str, Any],
    *,
    task: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    rank: int,
    where: str,
) -> None:
    """Raise :class:`CheckpointError` if ``state`` cannot be restored whole.

    Args:
        state: What :func:`~pynsm.train.load_checkpoint` returned.
        task, optimizer, scheduler, scaler: The trainer's objects to restore into.
        rank: This process's rank (which RNG state it would take).
        where: The file, for the message.
    """

    def fail(reason: str) -> None:
        raise CheckpointError(f"{where} does not fit this trainer: {reason}")

    missing = {"model", "optimizer", "epoch", "step", "rng"} - set(state)
    if missing:
        fail(f"it lacks training state {sorted(missing)}")
    for key in ("epoch", "step"):
        value = state[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            fail(f"{key!r} must be an int >= 0, got {value!r}")
    _check_model(state["model"], task, fail)
    _check_optimizer(state, optimizer, fail)
    for key, obj in (("scheduler", scheduler), ("scaler", scaler)):
        saved = state.get(key)
        if saved is not None and not isinstance(saved, dict):
            fail(f"{key!r} must be a dict or None, got {type(saved).__name__}")
        saved_class = state.get(f"{key}_class")
        if saved is not None and obj is not None and saved_class is not None:
            if saved_class != qualified_name(obj):
                fail(
                    f"it was saved with {key} {saved_class}, this trainer has "
                    f"{qualified_name(obj)}"
                )
    _check_history(state.get("history", []), fail)
    try:
        check_metadata(state.get("metadata", {}), "metadata")
    except TypeError as exc:
        fail(str(exc))
    _check_rng(state["rng"], rank, fail)
    rank_local = state.get("rank_local")
    if rank_local is not None and not (
        isinstance(rank_local, list) and all(isinstance(s, dict) for s in rank_local)
    ):
        fail("'rank_local' must be a list of dicts")


def _check_model(saved: Any, task: nn.Module, fail: Any) -> None:
    if not isinstance(saved, dict):
        fail(f"'model' must be a dict, got {type(saved).__name__}")
    expected = task.state_dict()
    missing = [key for key in expected if key not in saved]
    unexpected = [key for key in saved if key not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(
                f"missing {missing[:3]}" + (" ..." if len(missing) > 3 else "")
            )
        if unexpected:
            parts.append(
                f"unexpected {unexpected[:3]}" + (" ..." if len(unexpected) > 3 else "")
            )
        fail("it holds another model: " + ", ".join(parts))
    own_loading = _custom_loading_keys(task)
    for key, value in expected.items():
        if key.endswith(_EXTRA_STATE_SUFFIX):
            continue  # the module's own set_extra_state judges it
        stored = saved[key]
        if not isinstance(stored, Tensor):
            fail(f"model entry {key!r} is a {type(stored).__name__}, not a tensor")
        if key in own_loading:
            continue  # e.g. a lazily sized bank that adopts the saved shape
        if isinstance(value, Tensor) and stored.shape != value.shape:
            fail(
                f"model entry {key!r} has shape {tuple(stored.shape)}, this model "
                f"{tuple(value.shape)}"
            )


def _custom_loading_keys(task: nn.Module) -> set[str]:
    """Entries of modules that load themselves (``_load_from_state_dict``
    overridden): their shapes are theirs to judge, while the load is tried."""
    keys = set()
    for name, module in task.named_modules():
        if type(module)._load_from_state_dict is not nn.Module._load_from_state_dict:
            prefix = f"{name}." if name else ""
            local = module.state_dict(keep_vars=True)
            keys.update(prefix + key for key in local)
    return keys


def _check_optimizer(state: Mapping[str, Any], optimizer: Any, fail: Any) -> None:
    saved = state["optimizer"]
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict):
        fail("'optimizer' must be an optimizer state_dict (a dict with 'state')")
    groups = saved.get("param_groups")
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        fail("the optimizer state has no list of 'param_groups'")
    saved_class = state.get("optimizer_class")
    if saved_class is not None and saved_class != qualified_name(optimizer):
        fail(
            f"it was saved by optimizer {saved_class}, this trainer uses "
            f"{qualified_name(optimizer)}"
        )
    # checkpoints without the class name: another optimizer shows in its settings
    needed = set(optimizer.defaults) - {"lr"} - _VERSION_DEPENDENT
    for group in groups:
        absent = sorted(needed - set(group))
        if absent:
            fail(
                f"its optimizer settings lack {absent}: it was saved by another "
                f"optimizer than {type(optimizer).__name__}"
            )
    if len(groups) != len(optimizer.param_groups):
        fail(
            f"the optimizer has {len(groups)} parameter groups, this one "
            f"{len(optimizer.param_groups)}"
        )
    params: dict[Any, Tensor] = {}
    for saved_group, group in zip(groups, optimizer.param_groups):
        ids = saved_group.get("params")
        if not isinstance(ids, list) or len(ids) != len(group["params"]):
            fail("the optimizer's parameter groups have other sizes than this one's")
        params.update(zip(ids, group["params"]))
    for index, entry in saved["state"].items():
        if index not in params:
            fail(f"the optimizer state refers to unknown parameter {index!r}")
        if not isinstance(entry, dict):
            fail(f"the optimizer state of parameter {index!r} is not a dict")
        for name, value in entry.items():
            if isinstance(value, Tensor) and value.dim() > 0:
                if value.shape != params[index].shape:
                    fail(
                        f"optimizer state {name!r} of parameter {index} has shape "
                        f"{tuple(value.shape)}, the parameter "
                        f"{tuple(params[index].shape)}"
                    )
            elif not isinstance(value, (Tensor, numbers.Number, type(None))):
                fail(f"optimizer state {name!r} is a {type(value).__name__}")


def _check_history(history: Any, fail: Any) -> None:
    if not isinstance(history, list):
        fail(f"'history' must be a list, got {type(history).__name__}")
    for i, entry in enumerate(history):
        if not isinstance(entry, dict):
            fail(f"history entry {i} is a {type(entry).__name__}, not a dict")
        for key, value in entry.items():
            if (
                not isinstance(key, str)
                or isinstance(value, bool)
                or not isinstance(value, (int, float))
            ):
                fail(f"history entry {i} has {key!r}: {value!r} (not a number)")


def _check_rng(rng: Any, rank: int, fail: Any) -> None:
    if not isinstance(rng, list) or not rng:
        fail("'rng' must be a non-empty list of generator states")
    entry = rng[rank] if len(rng) > rank else rng[0]
    if not isinstance(entry, dict) or not {"python", "numpy", "torch"} <= set(entry):
        fail("its RNG state lacks the python/numpy/torch generators")
    # the exact test: set it, then put the current state back
    current = get_rng_state()
    try:
        set_rng_state(entry)
    except Exception as exc:  # any malformed field
        fail(f"its RNG state is unusable ({type(exc).__name__})")
    finally:
        set_rng_state(current)
