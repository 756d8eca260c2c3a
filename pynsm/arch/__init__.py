"""Architectures: similarity-matching circuits and their iteration base classes, and
the building blocks and ready models for self-supervised learning (MSN, PMSN, SwaV)."""

from .base import IterationLossModule, IterationModule
from .convnet import SmallConvNet
from .heads import (
    MSNProjectionHead,
    MSNPrototypes,
    ProjectionHead,
    SwaVProjectionHead,
    SwaVPrototypes,
)
from .masking import num_kept_tokens, random_token_mask
from .momentum import (
    activate_requires_grad,
    cosine_schedule,
    deactivate_requires_grad,
    update_momentum,
)
from .msn import MSN, PMSN
from .similarity import (
    MultiSimilarityMatching,
    SimilarityMatching,
    SupervisedSimilarityMatching,
)
from .swav import SwaV
from .swav_queue import SwaVQueue
from .vit import MaskedVisionTransformer, gather_tokens

__all__ = [
    "IterationModule",
    "IterationLossModule",
    "MultiSimilarityMatching",
    "SimilarityMatching",
    "SupervisedSimilarityMatching",
    "MSN",
    "PMSN",
    "SwaV",
    "SwaVQueue",
    "MaskedVisionTransformer",
    "gather_tokens",
    "SmallConvNet",
    "ProjectionHead",
    "MSNProjectionHead",
    "SwaVProjectionHead",
    "MSNPrototypes",
    "SwaVPrototypes",
    "random_token_mask",
    "num_kept_tokens",
    "update_momentum",
    "cosine_schedule",
    "deactivate_requires_grad",
    "activate_requires_grad",
]
