"""Generate the API reference: one page per public module of ``pynsm``.

Run by mkdocs-gen-files at build time, so a new module or a new name in ``__all__``
appears in the reference without anyone editing a list. A package that defines
``__all__`` gets a summary table and one entry per exported name; any other module is
rendered whole by mkdocstrings (its public, documented members). If
``docs/reference_notes/<dotted.module.name>.md`` exists, its text (the formulas behind
the module, say) is placed above the generated reference of that module.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path

import mkdocs_gen_files

PACKAGE = "pynsm"
ROOT = Path(__file__).resolve().parent.parent
NOTES = Path(__file__).resolve().parent / "reference_notes"
# The checkout first, so the reference documents this source tree even uninstalled.
sys.path.insert(0, str(ROOT))


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
    return line.replace("|", "\\|")


def package_page(name: str, module: object, exported: list[str]) -> str:
    """Summary table, then one mkdocstrings entry per documented export."""
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
        if importlib.util.find_spec(f"{name}.{export}") is not None
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
            lines.append(f"| [`{export}`](#{name}.{export}) | `{value!r}` |")
    lines.append("")
    members = "\n".join(f"        - {export}" for export in rendered)
    lines += [
        f"::: {name}",
        "    options:",
        "      show_root_heading: false",
        "      show_root_toc_entry: false",
        "      members:",
        members,
        "",
    ]
    for export in shadowed:
        value = getattr(module, export)
        lines += [
            f'<h2 id="{name}.{export}"><code>{export}</code></h2>',
            "",
            f"::: {value.__module__}.{value.__qualname__}",
            "    options:",
            "      show_root_heading: false",
            "      show_root_toc_entry: false",
            "",
        ]
    # Plain values (``__version__``) have no docstring to render: list them here.
    for export in exported:
        if export not in documented:
            value = getattr(module, export)
            lines += [
                f'<h2 id="{name}.{export}"><code>{export}</code></h2>',
                "",
                f"`{name}.{export} = {value!r}`",
                "",
            ]
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
        if is_package and exported:
            text.append(package_page(name, module, list(exported)))
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
