"""Code written for pynsm 1.0.1 finds everything of ``pynsm.util`` at the same paths.

The peer's files are read with ``ast`` (never imported here: it has the same import
name), so the list of what 1.0.1 exposes comes from its source, not from a copy.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest
import torch
from peer import PEER_DIR, requires_peer, run_peer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pytestmark = requires_peer

PEER_UTIL = PEER_DIR / "pynsm" / "util"


def _peer_modules() -> dict[str, Path]:
    """Dotted name -> source file of every module of the peer's ``pynsm.util``."""
    modules = {}
    for path in sorted(PEER_UTIL.rglob("*.py")):
        parts = path.relative_to(PEER_DIR).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _exposed(path: Path) -> dict[str, ast.AST | None]:
    """Public names a module exposes: ``__all__``, its own definitions, its re-exports.

    Third-party names it merely imports for itself (``torch``, ``Optional``) are not
    part of its API. Values are the defining ``FunctionDef``/``ClassDef`` where the
    file has it, else ``None``.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: dict[str, ast.AST | None] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id == "__all__":
                    names.update(dict.fromkeys(ast.literal_eval(node.value)))
                elif isinstance(target, ast.Name):
                    names[target.id] = None
        elif isinstance(node, ast.ImportFrom) and (
            node.level > 0 or (node.module or "").startswith("pynsm")
        ):
            for alias in node.names:
                names.setdefault(alias.asname or alias.name, None)
    return {name: value for name, value in names.items() if not name.startswith("_")}


def _peer_api() -> list[tuple[str, str, ast.AST | None]]:
    modules = _peer_modules()
    api = []
    for module, path in modules.items():
        api += [(module, name, node) for name, node in _exposed(path).items()]
        # a package exposes its submodules as attributes
        api += [
            (module, sub.rsplit(".", 1)[1], None)
            for sub in modules
            if sub.rsplit(".", 1)[0] == module and sub != module
        ]
    return api


def test_the_peer_exposes_what_this_test_expects_to_find() -> None:
    # guards the parser: an empty list would make every check below vacuous
    api = {(module, name) for module, name, _ in _peer_api()}
    assert ("pynsm.util", "extract_embeddings") in api
    assert ("pynsm.util", "validation") in api
    assert ("pynsm.util.validation", "extract_embeddings") in api


@pytest.mark.parametrize(
    ("module", "name"),
    [(module, name) for module, name, _ in _peer_api()],
    ids=[f"{module}.{name}" for module, name, _ in _peer_api()],
)
def test_every_peer_name_is_importable_at_the_same_path(module: str, name: str) -> None:
    ours = importlib.import_module(module)  # e.g. ``import pynsm.util`` alone
    assert hasattr(ours, name), f"from {module} import {name} fails"


def test_every_peer_all_name_is_in_our_all() -> None:
    for module, path in _peer_modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
            ):
                missing = set(ast.literal_eval(node.value)) - set(
                    importlib.import_module(module).__all__
                )
                assert not missing, f"{module}.__all__ lacks {sorted(missing)}"


_FUNCTIONS = [
    (module, name, node)
    for module, name, node in _peer_api()
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
]


@pytest.mark.parametrize(
    ("module", "name", "node"),
    _FUNCTIONS,
    ids=[f"{module}.{name}" for module, name, _ in _FUNCTIONS],
)
def test_peer_calls_bind_to_our_functions(module: str, name: str, node) -> None:
    """Every call the peer's signature allows binds to ours, by position and name."""
    ours = inspect.signature(getattr(importlib.import_module(module), name))
    params = list(ours.parameters.values())
    positional = node.args.posonlyargs + node.args.args
    first_default = len(positional) - len(node.args.defaults)
    for index, arg in enumerate(positional):
        assert index < len(params) and params[index].name == arg.arg, (
            f"{module}.{name}: 1.0.1's argument {index} is {arg.arg!r}, ours is "
            f"{params[index].name if index < len(params) else None!r}"
        )
        assert params[index].kind in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        )
        if index >= first_default:
            assert params[index].default is not inspect.Parameter.empty, (
                f"{module}.{name}: {arg.arg!r} is optional in 1.0.1, required here"
            )
    required_beyond = [
        p.name
        for p in params[len(positional) :]
        if p.default is inspect.Parameter.empty
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    assert not required_beyond, f"{module}.{name} requires more: {required_beyond}"


def test_extract_embeddings_gives_what_the_peer_gives() -> None:
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Dropout(0.5))
    model.train()  # both must switch to eval mode (no dropout) and back
    x, labels = torch.randn(11, 5), torch.arange(11) % 3
    outputs = run_peer(
        """
        from torch.utils.data import DataLoader, TensorDataset
        from pynsm.util.validation import extract_embeddings
        model = inputs["model"]
        loader = DataLoader(TensorDataset(inputs["x"], inputs["labels"]), batch_size=4)
        result = extract_embeddings(model, loader, progress=None)
        outputs.update(output=result.output, label=result.label)
        outputs["training"] = model.training
        """,
        {"model": model, "x": x, "labels": labels},
    )
    from pynsm.util.validation import extract_embeddings

    loader = DataLoader(TensorDataset(x, labels), batch_size=4)
    result = extract_embeddings(model, loader, progress=None)
    torch.testing.assert_close(result.output, outputs["output"])
    assert torch.equal(result.label, outputs["label"])
    assert model.training is outputs["training"] is True
