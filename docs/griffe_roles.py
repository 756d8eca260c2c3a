"""Griffe extension: render Sphinx roles in docstrings as links (or code).

Docstrings here are Google style, but many name things the Sphinx way
(``:class:`~pynsm.train.Trainer```, ``:func:`stratified_split```), which the
Markdown renderer prints as raw text. Once the whole package is loaded, each role
becomes a cross-reference when its target is an object of the package, resolved
like a name in the docstring's scope (``fit`` inside ``Trainer`` is
``pynsm.train.Trainer.fit``), and plain code otherwise (``torch.distributed``).
The reference is *optional*: a target that has no entry of its own in the built
site (a private helper) renders as code instead of failing the strict build.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(
    r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const):`(~?)([^`]+)`"
)


def _title(short: str, name: str) -> tuple[str, str]:
    """``(target, title)`` of a role: ``~`` keeps the last component as the title."""
    bare = name.strip().removesuffix("()")
    title = bare.rsplit(".", 1)[-1] if short else bare
    return bare, title + name.strip()[len(bare) :]  # keep the "()" the author wrote


def _autoref(target: str, title: str) -> str:
    return f'<autoref identifier="{target}" optional><code>{title}</code></autoref>'


def roles_to_markdown(text: str, package: str = "pynsm") -> str:
    """Rewrite roles in ``text`` out of context: full ``package`` paths link.

    For text without an object to resolve names from (a summary line); names that
    are not full paths become code.
    """

    def replace(match: re.Match[str]) -> str:
        target, title = _title(match.group(1), match.group(2))
        if target == package or target.startswith(package + "."):
            return _autoref(target, title)
        return f"`{title}`"

    return _ROLE.sub(replace, text)


def _lookup(root: griffe.Module, path: str) -> bool:
    """Whether ``path`` (dotted, starting with the package name) is an object."""
    parts = path.split(".")
    if parts[0] != root.name:
        return False
    node: griffe.Object | griffe.Alias = root
    for part in parts[1:]:
        try:
            node = node.members[part]
        except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            return False
    return True


def _target(obj: griffe.Object, root: griffe.Module, name: str) -> str | None:
    """The full path of ``name`` as written in a docstring of ``obj``, if any."""
    if _lookup(root, name):
        return name
    first, _, rest = name.partition(".")
    scope: griffe.Object | None = obj
    while scope is not None:
        # a member of an enclosing scope, or a name the enclosing module imports
        candidate = f"{scope.path}.{name}"
        if _lookup(root, candidate):
            return candidate
        member = scope.members.get(first) if hasattr(scope, "members") else None
        if isinstance(member, griffe.Alias):
            candidate = f"{member.target_path}.{rest}" if rest else member.target_path
            if _lookup(root, candidate):
                return candidate
        scope = scope.parent
    return None


def _rewrite(obj: griffe.Object, root: griffe.Module) -> None:
    if obj.docstring is None:
        return

    def replace(match: re.Match[str]) -> str:
        bare, title = _title(match.group(1), match.group(2))
        target = _target(obj, root, bare)
        return f"`{title}`" if target is None else _autoref(target, title)

    obj.docstring.value = _ROLE.sub(replace, obj.docstring.value)


def _walk(obj: griffe.Object, root: griffe.Module) -> None:
    _rewrite(obj, root)
    for member in obj.members.values():
        # aliases share their target's docstring, which is rewritten where it lives
        if not isinstance(member, griffe.Alias):
            _walk(member, root)


class SphinxRoles(griffe.Extension):
    """Rewrite ``:role:`target``` in every docstring of a loaded package."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        _walk(pkg, pkg)
