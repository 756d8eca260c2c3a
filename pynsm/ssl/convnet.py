"""A small convolutional backbone for low-resolution images (e.g. 8×8 digits)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SmallConvNet(nn.Module):
    """Three 3×3 conv blocks with batch norm, one 2×2 max-pool and global pooling.

    ``conv(in→w) → conv(w→2w) → maxpool → conv(2w→2w) → global average``, every conv
    followed by batch norm and ReLU; works for any image side ≥ 2 (SwaV feeds it both
    global and small local crops).

    Args:
        in_channels: Number of image channels.
        width: Channels of the first block; the output has ``2 · width`` features.

    Shapes:
        ``[B, in_channels, H, W]`` → ``[B, 2 · width]``.

    Example:
        >>> SmallConvNet(in_channels=1, width=16)(torch.rand(3, 1, 8, 8)).shape
        torch.Size([3, 32])
    """

    def __init__(self, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        for name, value in [("in_channels", in_channels), ("width", width)]:
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.in_channels = in_channels
        self.output_dim = 2 * width

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]

        self.layers = nn.Sequential(
            *block(in_channels, width),
            *block(width, 2 * width),
            nn.MaxPool2d(2),
            *block(2 * width, 2 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
        )

    def forward(self, images: Tensor) -> Tensor:
        """Features ``[B, 2 · width]`` of ``images`` ``[B, in_channels, H, W]``."""
        return self.layers(images)


@torch.no_grad()
def infer_feature_dim(backbone: nn.Module, in_channels: int, image_size: int) -> int:
    """Feature size of ``backbone`` by a dry run on zeros (batch-norm stats untouched).

    Example:
        >>> infer_feature_dim(SmallConvNet(1, width=8), in_channels=1, image_size=8)
        16
    """
    was_training = backbone.training
    backbone.eval()
    try:
        device = next(backbone.parameters()).device
        probe = torch.zeros(2, in_channels, image_size, image_size, device=device)
        return backbone(probe).flatten(1).shape[1]
    finally:
        backbone.train(was_training)
