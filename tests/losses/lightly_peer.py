"""Import single modules of an unpacked lightly release (for side-by-side tests).

lightly's top-level package pulls in its API client (pydantic, ...) and its model
utilities import torchvision at module level; the loss modules use neither. So the
parent packages are registered as bare namespace modules (and, when torchvision is
not installed, a stand-in with the one name imported at module level), only the
requested module files are executed, and ``sys.modules`` is restored afterwards.
Fetch the releases with ``tests/fetch_lightly.sh``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / ".peer"
_PACKAGES = ("loss", "loss.regularizer", "models", "models.modules", "utils")
_TOP_LEVEL = ("lightly", "torchvision")


def lightly_module(version: str, name: str) -> types.ModuleType | None:
    """``lightly.<name>`` from ``.peer/lightly-<version>``, or ``None`` if absent."""
    root = ROOT / f"lightly-{version}" / "lightly"
    if not (root / "loss").is_dir():
        return None
    need_stand_in = importlib.util.find_spec("torchvision") is None
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in _TOP_LEVEL}
    for key in saved:
        del sys.modules[key]
    try:
        _register("lightly", root)._torchvision_vit_available = False
        for package in _PACKAGES:
            _register(f"lightly.{package}", root.joinpath(*package.split(".")))
        if need_stand_in:
            ops = _register("torchvision.ops", root)
            ops.StochasticDepth = None
            _register("torchvision", root).ops = ops
        return importlib.import_module(f"lightly.{name}")
    finally:
        for key in [k for k in sys.modules if k.split(".")[0] in _TOP_LEVEL]:
            del sys.modules[key]
        sys.modules.update(saved)


def _register(name: str, path: Path) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = [str(path)]
    sys.modules[name] = module
    return module
