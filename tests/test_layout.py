"""The dependency rules of the package layout (DESIGN.md §2), checked two ways.

At run time, in a fresh interpreter: what an ``import`` actually loads (the root
package is lazy, ``pynsm.losses`` stands alone). Statically, over every file of
``pynsm/``: which package modules each file imports, including imports inside
functions (a lazy import is still a dependency) and ``importlib.import_module`` calls
with a literal name.
"""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pynsm"


# --------------------------------------------------------------------------- run time


# What each probe runs in a fresh interpreter; all are started at once (each pays
# for its own ``import torch``), then every test reads its answer.
PROBES = {
    "pynsm": "import pynsm",
    "pynsm+circuit": "import pynsm; pynsm.SimilarityMatching",
    **{
        name: f"import {name}"
        for name in (
            "pynsm.losses",
            "pynsm.arch",
            "pynsm.ssl",
            "pynsm.train",
            "pynsm.eval",
            "pynsm.data",
        )
    },
}


@pytest.fixture(scope="module")
def loaded_after() -> dict[str, set[str]]:
    """Probe name -> modules in ``sys.modules`` after its code ran."""
    report = "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    running = {
        name: subprocess.Popen(
            [sys.executable, "-c", code + report],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, code in PROBES.items()
    }
    answers = {}
    for name, process in running.items():
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, f"{PROBES[name]!r} failed:\n{err}"
        answers[name] = set(json.loads(out.splitlines()[-1]))
    return answers


def _within(modules: set[str], *packages: str) -> set[str]:
    return {
        m for m in modules if any(m == p or m.startswith(p + ".") for p in packages)
    }


def test_import_losses_loads_no_model_harness_or_sklearn(loaded_after) -> None:
    loaded = loaded_after["pynsm.losses"]
    assert "pynsm.losses" in loaded
    assert not _within(
        loaded, "pynsm.arch", "pynsm.ssl", "pynsm.train", "pynsm.eval", "sklearn"
    )


def test_import_arch_loads_neither_harness_nor_losses_nor_ssl(loaded_after) -> None:
    loaded = loaded_after["pynsm.arch"]
    assert "pynsm.arch" in loaded
    assert not _within(loaded, "pynsm.train", "pynsm.losses", "pynsm.ssl")


def test_import_pynsm_loads_nothing_until_an_attribute_is_used(loaded_after) -> None:
    assert _within(loaded_after["pynsm"], "pynsm") == {"pynsm"}
    # a circuit brings the circuits, and nothing of the SSL or training stack
    loaded = _within(loaded_after["pynsm+circuit"], "pynsm")
    assert "pynsm.arch.similarity" in loaded
    assert not _within(loaded, "pynsm.ssl", "pynsm.train", "pynsm.losses")


@pytest.mark.parametrize(
    ("package", "not_loaded"),
    [
        ("pynsm.ssl", ("pynsm.arch", "pynsm.train", "pynsm.eval", "pynsm.cli")),
        (
            "pynsm.train",
            ("pynsm.arch", "pynsm.ssl", "pynsm.losses", "pynsm.cli", "lightning"),
        ),
        ("pynsm.eval", ("pynsm.arch", "pynsm.ssl", "pynsm.losses", "pynsm.train")),
        ("pynsm.data", ("pynsm.arch", "pynsm.ssl", "pynsm.losses", "pynsm.train")),
    ],
)
def test_each_package_loads_only_what_it_depends_on(
    loaded_after, package: str, not_loaded: tuple[str, ...]
) -> None:
    # scikit-learn is optional everywhere: only the calls that need it import it
    loaded = loaded_after[package]
    assert package in loaded
    assert not _within(loaded, *not_loaded, "sklearn")


def test_the_root_package_still_exports_its_names() -> None:
    # the lazy root must not lose what it re-exports (pynsm 1.0.1's names)
    import pynsm

    for name in pynsm.__all__:
        assert getattr(pynsm, name) is not None, name
    assert set(pynsm.__all__) <= set(dir(pynsm))


# ------------------------------------------------------------------------------ static


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _resolve(name: str, attribute: str | None) -> str:
    """The module that ``from name import attribute`` (or ``import name``) loads.

    ``from pynsm import distributed`` is the module ``pynsm.distributed``;
    ``from pynsm.arch import SimilarityMatching`` names the module that defines the
    class, ``pynsm.arch.similarity``.
    """
    if attribute is None:
        return name
    candidate = f"{name}.{attribute}"
    relative = Path(*candidate.split("."))
    if (ROOT / relative).with_suffix(".py").exists() or (ROOT / relative).is_dir():
        return candidate
    if not name.startswith("pynsm"):
        return name
    value = getattr(importlib.import_module(name), attribute, None)
    defined_in = getattr(value, "__module__", None)
    return defined_in if isinstance(defined_in, str) else name


def _imports_in(source: str, package: str) -> set[str]:
    """Every ``pynsm`` module that ``source``, a file of ``package``, imports."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found |= {_resolve(module, alias.name) for alias in node.names}
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None))
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value)
    return {m for m in found if m == "pynsm" or m.startswith("pynsm.")}


def _imports(path: Path) -> set[str]:
    """Every ``pynsm`` module that the file at ``path`` imports, anywhere in it."""
    here = _module_name(path)
    package = here if _is_package(path) else here.rpartition(".")[0]
    return _imports_in(path.read_text(encoding="utf-8"), package)


def _files(package: str) -> list[Path]:
    folder = PACKAGE / package
    if folder.is_dir():
        return sorted(folder.rglob("*.py"))
    return [folder.with_suffix(".py")]


def _offenders(package: str, forbidden: tuple[str, ...]) -> list[str]:
    files = _files(package)
    assert files and all(f.exists() for f in files), f"no sources for pynsm.{package}"
    return [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in files
        for module in sorted(_imports(path))
        if any(module == f or module.startswith(f + ".") for f in forbidden)
    ]


def test_the_static_check_sees_lazy_relative_and_attribute_imports() -> None:
    # the checker itself: an empty answer must mean "no import", not "not parsed"
    source = """
from . import sinkhorn
from ..arch import SimilarityMatching
import torch

def later():
    import pynsm.train.trainer
    return importlib.import_module("pynsm.ssl")
"""
    assert _imports_in(source, "pynsm.losses") == {
        "pynsm.losses.sinkhorn",
        "pynsm.arch.similarity",  # the module that defines the class
        "pynsm.train.trainer",
        "pynsm.ssl",
    }
    assert _resolve("pynsm", "distributed") == "pynsm.distributed"
    tree = ast.parse('"""Works with pynsm.ssl.SwaV."""\nNAME = "pynsm.ssl.SwaV"\n')
    assert [n.lineno for n in _strings_outside_docstrings(tree)] == [2]


def test_circuits_import_neither_harness_nor_losses_nor_ssl() -> None:
    assert not _offenders("arch", ("pynsm.train", "pynsm.losses", "pynsm.ssl"))


def test_losses_import_nothing_of_the_package_but_its_small_helpers() -> None:
    # DESIGN §2: losses import nothing but ``distributed`` (and the shared checks)
    offenders = [
        line
        for line in _offenders("losses", ("pynsm",))
        if not line.split(" imports ")[1].startswith(
            ("pynsm.losses", "pynsm.distributed", "pynsm.validation")
        )
    ]
    assert not offenders


def test_losses_import_no_model_harness_evaluation_or_cli() -> None:
    forbidden = ("pynsm.arch", "pynsm.ssl", "pynsm.train", "pynsm.eval", "pynsm.cli")
    assert not _offenders("losses", forbidden)


def _strings_outside_docstrings(tree: ast.AST) -> list[ast.Constant]:
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(
            node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
        ):
            body = node.body
            if body and isinstance(body[0], ast.Expr):
                if isinstance(body[0].value, ast.Constant):
                    docstrings.add(id(body[0].value))
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


CONCRETE_MODELS = ("pynsm.ssl", "pynsm.arch.similarity")


def test_the_harness_names_no_concrete_model() -> None:
    offenders = _offenders("train", CONCRETE_MODELS)
    for path in _files("train"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        offenders += [
            f"{path.relative_to(ROOT)}:{node.lineno} names {node.value!r}"
            for node in _strings_outside_docstrings(tree)
            if any(model in node.value for model in CONCRETE_MODELS)
        ]
    assert not offenders


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("ssl", ("pynsm.arch", "pynsm.train", "pynsm.eval", "pynsm.cli")),
        (
            "data",
            ("pynsm.arch", "pynsm.ssl", "pynsm.losses", "pynsm.train", "pynsm.cli"),
        ),
        ("validation", ("pynsm.arch", "pynsm.ssl", "pynsm.losses", "pynsm.train")),
    ],
)
def test_dependencies_point_one_way(package: str, forbidden: tuple[str, ...]) -> None:
    # cli -> train, ssl, arch, data, eval; ssl -> losses, data
    assert not _offenders(package, forbidden)


def test_nothing_but_the_entry_point_imports_the_cli() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if not _module_name(path).startswith(("pynsm.cli", "pynsm.__main__"))
        for module in _imports(path)
        if module == "pynsm.cli" or module.startswith("pynsm.cli.")
    ]
    assert not offenders
