"""pynsm: neural similarity-matching circuits and self-supervised clustering losses.

The names below are loaded on first use (PEP 562), so ``import pynsm.losses`` pulls
in neither the circuits nor the SSL models nor scikit-learn.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "2.0.0.dev0"

# public name -> module that defines it
_EXPORTS = {
    "IterationModule": "pynsm.arch",
    "IterationLossModule": "pynsm.arch",
    "MultiSimilarityMatching": "pynsm.arch",
    "SimilarityMatching": "pynsm.arch",
    "SupervisedSimilarityMatching": "pynsm.arch",
    "extract_embeddings": "pynsm.eval",
}

__all__ = [*_EXPORTS, "__version__"]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from pynsm.arch import (
        IterationLossModule as IterationLossModule,
    )
    from pynsm.arch import (
        IterationModule as IterationModule,
    )
    from pynsm.arch import (
        MultiSimilarityMatching as MultiSimilarityMatching,
    )
    from pynsm.arch import (
        SimilarityMatching as SimilarityMatching,
    )
    from pynsm.arch import (
        SupervisedSimilarityMatching as SupervisedSimilarityMatching,
    )
    from pynsm.eval import extract_embeddings as extract_embeddings


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pynsm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
