"""Sphinx roles in docstrings become links (or code) in the reference.

``docs/griffe_roles.py`` rewrites ``:class:`~pynsm.train.Trainer``` and friends once
griffe has loaded the package; these tests load a small package of their own.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

griffe = pytest.importorskip("griffe")

DOCS = Path(__file__).resolve().parents[2] / "docs"
sys.path.insert(0, str(DOCS))
try:
    from griffe_roles import SphinxRoles, roles_to_markdown
finally:
    sys.path.remove(str(DOCS))


def _ref(target: str, title: str) -> str:
    return f'<autoref identifier="{target}" optional><code>{title}</code></autoref>'


def test_names_resolve_in_the_scope_of_the_docstring() -> None:
    modules = {
        "__init__.py": (
            '"""See :class:`~probe.core.Thing` and :class:`Thing`."""\n'
            "from probe.core import Thing\n"
        ),
        "core.py": (
            '"""Core."""\n'
            "class Thing:\n"
            '    """See :meth:`fit`, :func:`helper()` and :mod:`torch.nn`."""\n'
            "    def fit(self):\n"
            '        """Fit."""\n'
            "def helper():\n"
            '    """Uses :class:`Thing` and :func:`missing`."""\n'
        ),
    }
    extensions = griffe.load_extensions(SphinxRoles)
    with griffe.temporary_visited_package(
        "probe", modules, extensions=extensions
    ) as pkg:
        # ``~`` keeps the last component; a re-export resolves where it is exported
        thing, exported = (
            _ref("probe.core.Thing", "Thing"),
            _ref("probe.Thing", "Thing"),
        )
        assert pkg.docstring.value == f"See {thing} and {exported}."
        # a method from its class, a function from its module; outside: code
        assert pkg["core.Thing"].docstring.value == (
            f"See {_ref('probe.core.Thing.fit', 'fit')}, "
            f"{_ref('probe.core.helper', 'helper()')} and `torch.nn`."
        )
        assert pkg["core.helper"].docstring.value == (
            f"Uses {_ref('probe.core.Thing', 'Thing')} and `missing`."
        )


def test_roles_out_of_context_link_full_paths_only() -> None:
    text = roles_to_markdown(
        "See :class:`~pynsm.train.Trainer`, :func:`fit()` and :mod:`torch.distributed`."
    )
    assert text == (
        f"See {_ref('pynsm.train.Trainer', 'Trainer')}, `fit()` and "
        "`torch.distributed`."
    )
