"""A small convolutional backbone for low-resolution images (e.g. 8×8 digits)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pynsm.ssl.masking import mask_image_patches
from pynsm.validation import check_int


class SmallConvNet(nn.Module):
    """Three 3×3 conv blocks with batch norm, one 2×2 max-pool and global pooling.

    ``conv(in→w) → conv(w→2w) → maxpool → conv(2w→2w) → global average``, every conv
    followed by batch norm and ReLU; works for any image side ≥ 2 (SwaV and MSN feed
    it both global and small local crops).

    It can also play MSN's masked anchor: ``forward(images, idx_keep)`` zeroes every
    ``patch_size × patch_size`` patch not listed in ``idx_keep``
    (:func:`~pynsm.ssl.masking.mask_image_patches`) before the convolutions — the
    pixel-space form of dropping patch tokens from a vision transformer.

    Args:
        in_channels: Number of image channels.
        width: Channels of the first block; the output has ``2 · width`` features.
        patch_size: Side of the patches that ``idx_keep`` refers to.

    Shapes:
        ``[B, in_channels, H, W]`` (and optionally ``idx_keep [B, K]``) →
        ``[B, 2 · width]``; :meth:`pooled_features` with ``grid`` →
        ``[B, 2 · width · grid²]``.

    Example:
        >>> net = SmallConvNet(in_channels=1, width=16)
        >>> net(torch.rand(3, 1, 8, 8)).shape
        torch.Size([3, 32])
        >>> idx_keep = torch.arange(12).repeat(3, 1)  # keep 12 of the 16 2×2 patches
        >>> net(torch.rand(3, 1, 8, 8), idx_keep=idx_keep).shape
        torch.Size([3, 32])
        >>> net.pooled_features(torch.rand(3, 1, 8, 8), grid=3).shape
        torch.Size([3, 288])
    """

    def __init__(
        self, in_channels: int = 1, width: int = 32, patch_size: int = 2
    ) -> None:
        super().__init__()
        in_channels = check_int("in_channels", in_channels, minimum=1)
        width = check_int("width", width, minimum=1)
        self.in_channels = in_channels
        self.width = width
        self.patch_size = check_int("patch_size", patch_size, minimum=1)
        self.output_dim = 2 * width

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]

        # the feature map; global pooling is applied in forward (parameter names
        # are those of the former single Sequential that ended with the pooling)
        self.layers = nn.Sequential(
            *block(in_channels, width),
            *block(width, 2 * width),
            nn.MaxPool2d(2),
            *block(2 * width, 2 * width),
        )

    def feature_map(self, images: Tensor, idx_keep: Tensor | None = None) -> Tensor:
        """The last feature map ``[B, 2 · width, ⌊H / 2⌋, ⌊W / 2⌋]``.

        Args:
            images: ``[B, in_channels, H, W]``.
            idx_keep: Optional ``[B, K]`` indices of the patches to keep (row-major
                over the ``patch_size`` grid); the others are zeroed first.
        """
        if idx_keep is not None:
            images = mask_image_patches(images, idx_keep, self.patch_size)
        return self.layers(images)

    def forward(self, images: Tensor, idx_keep: Tensor | None = None) -> Tensor:
        """Globally averaged features ``[B, 2 · width]`` (see :meth:`feature_map`)."""
        return self.feature_map(images, idx_keep).mean(dim=(2, 3))

    def pooled_features(self, images: Tensor, grid: int = 1) -> Tensor:
        """The feature map average-pooled to ``grid × grid``, flattened.

        ``grid=1`` is :meth:`forward`. A coarse grid keeps *where* a stroke is,
        which global pooling forgets; for readouts of digits a 3×3 grid of the
        4×4 map (overlapping 2×2 windows) gives the best few-shot linear probes.

        Args:
            images: ``[B, in_channels, H, W]``.
            grid: Side of the pooled grid (``>= 1``).

        Returns:
            ``[B, 2 · width · grid²]``, channel-major (channel, row, column).
        """
        grid = check_int("grid", grid, minimum=1)
        pooled = nn.functional.adaptive_avg_pool2d(self.feature_map(images), grid)
        return pooled.flatten(1)


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
        # a backbone without parameters or buffers runs on the CPU
        tensors = [*backbone.parameters(), *backbone.buffers()]
        device = tensors[0].device if tensors else torch.device("cpu")
        probe = torch.zeros(2, in_channels, image_size, image_size, device=device)
        return backbone(probe).flatten(1).shape[1]
    finally:
        backbone.train(was_training)
