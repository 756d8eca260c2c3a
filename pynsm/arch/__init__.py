"""Similarity-matching circuits and the iteration base classes they are built on.

The self-supervised models live in :mod:`pynsm.ssl`; the losses in :mod:`pynsm.losses`.
"""

from .base import IterationLossModule, IterationModule
from .similarity import (
    MultiSimilarityMatching,
    SimilarityMatching,
    SupervisedSimilarityMatching,
)
from .whitening import RunningWhitening

__all__ = [
    "IterationModule",
    "IterationLossModule",
    "MultiSimilarityMatching",
    "RunningWhitening",
    "SimilarityMatching",
    "SupervisedSimilarityMatching",
]
