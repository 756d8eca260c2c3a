"""The progress bar: a notebook widget where one can be drawn, plain text elsewhere."""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

__all__ = ["progress_bar_class", "progress_bar"]


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()  # type: ignore[attr-defined]
    except AttributeError:
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def progress_bar_class() -> type:
    """``tqdm.notebook.tqdm`` in a Jupyter kernel with ipywidgets, else ``tqdm.std``.

    ``tqdm.auto`` picks the notebook bar in any kernel and, when ipywidgets is
    missing, warns (``TqdmWarning`` with the path of the installed tqdm) on every
    bar; choosing here means no warning is ever printed.

    Example:
        >>> progress_bar_class().__module__  # outside a notebook
        'tqdm.std'
    """
    if _in_notebook() and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm as notebook_tqdm

        return notebook_tqdm
    from tqdm.std import tqdm as text_tqdm

    return text_tqdm


def progress_bar(**kwargs: Any) -> Any:
    """A new bar of :func:`progress_bar_class` with ``kwargs`` (``total``, ...)."""
    return progress_bar_class()(**kwargs)
