"""pynsm: neural similarity-matching circuits and self-supervised clustering losses."""

__version__ = "2.0.0.dev0"

from .arch import (  # noqa: E402
    IterationLossModule,
    IterationModule,
    MultiSimilarityMatching,
    SimilarityMatching,
    SupervisedSimilarityMatching,
)
from .eval import extract_embeddings  # noqa: E402

__all__ = [
    "IterationModule",
    "IterationLossModule",
    "MultiSimilarityMatching",
    "SimilarityMatching",
    "SupervisedSimilarityMatching",
    "extract_embeddings",
    "__version__",
]
