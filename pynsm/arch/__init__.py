"""Architectures: similarity-matching circuits and their iteration base classes."""

from .base import IterationLossModule, IterationModule
from .similarity import (
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
]
