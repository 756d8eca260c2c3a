"""Generate the API reference: one page per public module of ``pynsm``.

Run by mkdocs-gen-files at build time, so a new module or a new name in ``__all__``
appears in the reference without anyone editing a list. A module or package that
defines ``__all__`` gets a summary table and one entry per exported name, constants
included (described by their ``#:`` comment); any other module is rendered whole by
mkdocstrings (its public, documented members). If
``docs/reference_notes/<dotted.module.name>.md`` exists, its text (the formulas behind
the module, say) is placed above the generated reference of that module.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Mapping
from pathlib import Path

import mkdocs_gen_files

PACKAGE = "pynsm"
ROOT = Path(__file__).resolve().parent.parent
NOTES = Path(__file__).resolve().parent / "reference_notes"
# The checkout first, so the reference documents this source tree even uninstalled.
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from griffe_roles import roles_to_markdown  # noqa: E402  (needs the path above)


def public_modules() -> list[tuple[str, ...]]:
    """Dotted paths (as tuples) of every public module, packages first, sorted."""
    found = []
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        # Private helpers (``_fused``) and the ``python -m`` entry point stay out.
        if any(part.startswith("_") for part in parts):
            continue
        found.append(parts)
    return sorted(found, key=lambda parts: (len(parts) > 1, parts))


def first_line(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    line = doc.strip().split("\n\n")[0].replace("\n", " ")
    return roles_to_markdown(line).replace("|", "\\|")


def source_file(name: str) -> Path | None:
    """The ``.py`` file of the module ``name`` in this checkout, if it has one."""
    base = ROOT.joinpath(*name.split("."))
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.exists():
            return path
    return None


def constant_doc(name: str, export: str, depth: int = 0) -> str:
    """The ``#:`` comment (or string literal) documenting ``name.export``.

    Follows ``from x import export`` to the module that assigns the value, since a
    plain value (a dict, a tuple) does not know where it was defined.
    """
    path = source_file(name)
    if path is None or depth > 5:
        return ""
    text = path.read_text(encoding="utf-8")
    lines, tree = text.splitlines(), ast.parse(text)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for index, node in enumerate(tree.body):
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign)
            else []
        )
        if any(isinstance(t, ast.Name) and t.id == export for t in targets):
            comment = []
            for line in reversed(lines[: node.lineno - 1]):
                if not line.startswith("#:"):
                    break
                comment.insert(0, line[2:].strip())
            if comment:
                return " ".join(comment)
            after = tree.body[index + 1] if index + 1 < len(tree.body) else None
            if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
                return inspect.cleandoc(str(after.value.value))
            return ""
        if isinstance(node, ast.ImportFrom) and any(
            (alias.asname or alias.name) == export for alias in node.names
        ):
            original = next(
                alias.name
                for alias in node.names
                if (alias.asname or alias.name) == export
            )
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            return constant_doc(source, original, depth + 1)
    return ""


def short_repr(value: object, limit: int = 100) -> str:
    """``repr(value)``, cut to ``limit`` characters; a long dict shows its keys."""
    text = repr(value)
    if len(text) > limit and isinstance(value, Mapping):
        text = "{" + ", ".join(f"{key!r}: …" for key in value) + "}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def api_page(name: str, module: object, exported: list[str], is_package: bool) -> str:
    """Summary table, then one entry per export (mkdocstrings or a constant's value)."""
    documented = [
        export
        for export in exported
        if inspect.isclass(getattr(module, export))
        or inspect.isroutine(getattr(module, export))
    ]
    # A name that is also a submodule (``losses.negative_cosine_similarity``, the
    # function, beside the module of the same name) resolves to the module in the
    # static analysis: render those from their defining module, under our own anchor.
    shadowed = [
        export
        for export in documented
        if is_package and importlib.util.find_spec(f"{name}.{export}") is not None
    ]
    rendered = [export for export in documented if export not in shadowed]
    lines = [
        "| Name | Summary |",
        "| --- | --- |",
    ]
    for export in exported:
        value = getattr(module, export)
        if export in rendered:
            link = f"[`{export}`][{name}.{export}]"
            lines.append(f"| {link} | {first_line(value)} |")
        elif export in shadowed:
            link = f"[`{export}`](#{name}.{export})"
            lines.append(f"| {link} | {first_line(value)} |")
        else:
            summary = roles_to_markdown(constant_doc(name, export))
            summary = summary or f"`{short_repr(value, 60)}`"
            summary = summary.replace("|", "\\|")
            lines.append(f"| [`{export}`](#{name}.{export}) | {summary} |")
    lines.append("")
    # the module's docstring, then its classes and functions, in ``__all__`` order
    members = "".join(f"\n        - {export}" for export in rendered) or " false"
    lines += [
        f"::: {name}",
        "    options:",
        "      show_root_heading: false",
        "      show_root_toc_entry: false",
        f"      members:{members}",
        "",
    ]
    for export in shadowed:
        value = getattr(module, export)
        lines += [
            f'<h2 id="{name}.{export}" markdown>`{export}`</h2>',
            "",
            f"::: {value.__module__}.{value.__qualname__}",
            "    options:",
            "      show_root_heading: false",
            "      show_root_toc_entry: false",
            "",
        ]
    # Constants (``__version__``, ``MODELS``) have no docstring for mkdocstrings to
    # render: their ``#:`` comment and value go here. (Headings in HTML with
    # ``markdown``, so that they reach the table of contents and ``__x__`` stays code.)
    for export in exported:
        if export not in documented:
            value = getattr(module, export)
            lines += [f'<h2 id="{name}.{export}" markdown>`{export}`</h2>', ""]
            doc = roles_to_markdown(constant_doc(name, export))
            if doc:
                lines += [doc, ""]
            lines += [f"`{name}.{export} = {short_repr(value)}`", ""]
    return "\n".join(lines)


def module_page(name: str) -> str:
    return f"::: {name}\n    options:\n      show_root_heading: false\n"


def main() -> None:
    nav = mkdocs_gen_files.Nav()
    for parts in public_modules():
        name = ".".join(parts)
        module = importlib.import_module(name)
        is_package = hasattr(module, "__path__")
        rel = Path(*parts[1:])
        doc_path = (rel / "index.md") if is_package else rel.with_suffix(".md")
        nav[parts] = doc_path.as_posix()

        text = [f"# `{name}`", ""]
        note = NOTES / f"{name}.md"
        if note.exists():
            text += [note.read_text(encoding="utf-8"), ""]
        exported = getattr(module, "__all__", None)
        if exported:
            text.append(api_page(name, module, list(exported), is_package))
        else:
            text.append(module_page(name))

        with mkdocs_gen_files.open(Path("reference", doc_path), "w") as page:
            page.write("\n".join(text))
        source = Path(*parts, "__init__.py") if is_package else Path(*parts)
        if not is_package:
            source = source.with_suffix(".py")
        mkdocs_gen_files.set_edit_path(Path("reference", doc_path), Path("..", source))

    with mkdocs_gen_files.open("reference/SUMMARY.md", "w") as summary:
        summary.writelines(nav.build_literate_nav())


main()
