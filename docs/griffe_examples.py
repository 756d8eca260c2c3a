"""Griffe extension: read ``Example:`` docstring sections as ``Examples:``.

The Google style parser only turns ``Examples:`` into a doctest section; the singular
``Example:``, which this project's docstrings use, would become an admonition whose
``>>>`` lines are rendered as plain Markdown (and read as links when they hold
brackets). Renaming the header before parsing renders both as code.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_SINGULAR = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Rename singular ``Example:`` section headers to ``Examples:``."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _SINGULAR.sub(r"\1Examples:", obj.docstring.value)
