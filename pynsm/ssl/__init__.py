"""Self-supervised models (MSN, PMSN, SwaV) and the blocks they are built from.

Each model is a complete task for :class:`pynsm.train.Trainer`: it turns a batch of
images into views, embeds them and returns its :mod:`pynsm.losses` loss.
"""

from .convnet import SmallConvNet
from .heads import (
    MSNProjectionHead,
    MSNPrototypes,
    ProjectionHead,
    SwaVProjectionHead,
    SwaVPrototypes,
)
from .masking import mask_image_patches, num_kept_tokens, random_token_mask
from .momentum import (
    activate_requires_grad,
    cosine_schedule,
    deactivate_requires_grad,
    update_momentum,
    warmup_cosine,
)
from .msn import MSN, PMSN
from .swav import SwaV
from .swav_queue import SwaVQueue
from .vit import MaskedVisionTransformer, gather_tokens

__all__ = [
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
    "mask_image_patches",
    "num_kept_tokens",
    "update_momentum",
    "cosine_schedule",
    "warmup_cosine",
    "deactivate_requires_grad",
    "activate_requires_grad",
]
