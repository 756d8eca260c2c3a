"""pynsm: neural similarity-matching circuits and self-supervised clustering losses."""

__version__ = "2.0.0.dev0"

from .arch import (  # noqa: E402
    IterationLossModule,
    IterationModule,
    MultiSimilarityMatching,
    SimilarityMatching,
    SupervisedSimilarityMatching,
)

__all__ = [
    "IterationModule",
    "IterationLossModule",
    "MultiSimilarityMatching",
    "SimilarityMatching",
    "SupervisedSimilarityMatching",
    "__version__",
]
