"""The harness's own modules depend on each other one way only (no import cycles).

A cycle (``trainer`` imports ``resume``, ``resume`` imports ``trainer`` back) means
neither module can be read, tested or imported without the other. Checked
statically over ``pynsm/train/``: every import counts, also one inside a function
or under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "pynsm.train"
FOLDER = Path(__file__).resolve().parents[2] / "pynsm" / "train"


def _imports(source: str, modules: set[str], package: str = PACKAGE) -> set[str]:
    """The modules of ``modules`` that ``source`` (a module of ``package``) imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x, from .x import y
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            # ``from pynsm.train import trainer`` imports the submodule
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found & modules


def _graph(sources: dict[str, str]) -> dict[str, set[str]]:
    modules = set(sources)
    return {name: _imports(text, modules) - {name} for name, text in sources.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One import cycle through each module that lies on one (depth-first)."""
    found, done = [], set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            found.append(path[path.index(name) :] + [name])
            return
        if name in done:
            return
        for other in sorted(graph[name]):
            visit(other, path + [name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    return found


def _train_sources() -> dict[str, str]:
    sources = {}
    for path in sorted(FOLDER.glob("*.py")):
        name = PACKAGE if path.stem == "__init__" else f"{PACKAGE}.{path.stem}"
        sources[name] = path.read_text(encoding="utf-8")
    return sources


def test_the_check_finds_a_cycle_through_a_type_checking_import():
    sources = {
        "pynsm.train": "from pynsm.train.a import A\n",
        "pynsm.train.a": "from pynsm.train.b import f\nclass A: ...\n",
        "pynsm.train.b": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from .a import A\n"
            "def f(a: 'A') -> None: ...\n"
        ),
        "pynsm.train.c": "def g():\n    from pynsm.train import b\n",
    }
    graph = _graph(sources)
    assert graph["pynsm.train.c"] == {"pynsm.train", "pynsm.train.b"}
    assert _cycles(graph) == [["pynsm.train.a", "pynsm.train.b", "pynsm.train.a"]]


def test_no_module_of_the_harness_imports_one_that_imports_it_back():
    sources = _train_sources()
    assert "pynsm.train.trainer" in sources and len(sources) > 10
    cycles = [" -> ".join(cycle) for cycle in _cycles(_graph(sources))]
    assert cycles == []
