"""A compact vision transformer that can run on a subset of its patch tokens."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pynsm.validation import check_int


class MaskedVisionTransformer(nn.Module):
    """Vision transformer (Dosovitskiy et al., 2020) that accepts kept-token indices.

    Images are cut into ``patch_size × patch_size`` patches, embedded linearly, given
    learned positional embeddings, optionally reduced to the kept tokens ``idx_keep``
    (as MSN does for its anchor views), prefixed with a class token and passed through
    pre-norm transformer blocks. The output is the final class token.

    Images of another size than ``image_size`` (e.g. MSN's small focal crops) are
    accepted as long as their sides are multiples of ``patch_size``: the positional
    embeddings are then resized by bicubic interpolation.

    Args:
        image_size: Side of the (square) training images.
        patch_size: Side of a patch; must divide ``image_size``.
        in_channels: Number of image channels.
        embed_dim: Token width (also the output feature size).
        depth: Number of transformer blocks.
        num_heads: Attention heads; must divide ``embed_dim``.
        mlp_ratio: Hidden width of the block MLPs relative to ``embed_dim``.
        dropout: Dropout in attention and MLPs.

    Shapes:
        images ``[B, in_channels, H, W]``, ``idx_keep`` ``[B, K]`` indices into the
        ``(H / patch_size) · (W / patch_size)`` patch tokens in row-major order;
        output ``[B, embed_dim]``.

    Example:
        >>> vit = MaskedVisionTransformer(image_size=8, patch_size=2, embed_dim=32)
        >>> images = torch.rand(4, 1, 8, 8)
        >>> idx_keep = torch.arange(12).repeat(4, 1)  # keep 12 of the 16 patches
        >>> vit(images).shape, vit(images, idx_keep=idx_keep).shape
        (torch.Size([4, 32]), torch.Size([4, 32]))
    """

    def __init__(
        self,
        image_size: int = 8,
        patch_size: int = 2,
        in_channels: int = 1,
        embed_dim: int = 64,
        depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        image_size = check_int("image_size", image_size, minimum=1)
        patch_size = check_int("patch_size", patch_size, minimum=1)
        in_channels = check_int("in_channels", in_channels, minimum=1)
        embed_dim = check_int("embed_dim", embed_dim, minimum=1)
        depth = check_int("depth", depth, minimum=1)
        num_heads = check_int("num_heads", num_heads, minimum=1)
        if image_size % patch_size != 0:
            raise ValueError(
                f"patch_size ({patch_size}) must divide image_size ({image_size})"
            )
        if embed_dim % num_heads != 0:
            raise ValueError(
                f"num_heads ({num_heads}) must divide embed_dim ({embed_dim})"
            )
        if mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio!r}")
        self.image_size = image_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.embed_dim = embed_dim
        self.grid_size = image_size // patch_size
        self.patch_embed = nn.Conv2d(
            in_channels, embed_dim, kernel_size=patch_size, stride=patch_size
        )
        self.class_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size**2, embed_dim))
        nn.init.trunc_normal_(self.class_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d_model=embed_dim,
            nhead=num_heads,
            dim_feedforward=int(embed_dim * mlp_ratio),
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(
            layer, num_layers=depth, enable_nested_tensor=False
        )
        self.norm = nn.LayerNorm(embed_dim)

    @property
    def num_patches(self) -> int:
        """Number of patch tokens of an ``image_size × image_size`` image."""
        return self.grid_size**2

    def tokenize(self, images: Tensor) -> Tensor:
        """Patch plus positional embeddings, ``[B, num_tokens, embed_dim]``."""
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(
                f"images must have shape [B, {self.in_channels}, H, W], "
                f"got {tuple(images.shape)}"
            )
        height, width = images.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"image sides must be multiples of patch_size={self.patch_size}, "
                f"got {height}×{width}"
            )
        tokens = self.patch_embed(images).flatten(2).transpose(1, 2)
        return tokens + self._positional_embedding(
            height // self.patch_size, width // self.patch_size
        )

    def encode_tokens(self, tokens: Tensor) -> Tensor:
        """Run the transformer on embedded tokens ``[B, K, D]``; returns ``[B, D]``."""
        class_tokens = self.class_token.expand(tokens.shape[0], -1, -1)
        sequence = torch.cat([class_tokens, tokens], dim=1)
        return self.norm(self.blocks(sequence))[:, 0]

    def forward(self, images: Tensor, idx_keep: Tensor | None = None) -> Tensor:
        """Class-token features of ``images``, using only the tokens in ``idx_keep``.

        Args:
            images: ``[B, in_channels, H, W]``.
            idx_keep: Optional ``[B, K]`` indices of the patch tokens to keep (see
                :func:`pynsm.ssl.masking.random_token_mask`); all tokens when None.

        Returns:
            Features ``[B, embed_dim]``.
        """
        tokens = self.tokenize(images)
        if idx_keep is not None:
            tokens = gather_tokens(tokens, idx_keep)
        return self.encode_tokens(tokens)

    def _positional_embedding(self, grid_height: int, grid_width: int) -> Tensor:
        if (grid_height, grid_width) == (self.grid_size, self.grid_size):
            return self.pos_embed
        grid = self.pos_embed.reshape(1, self.grid_size, self.grid_size, -1)
        resized = nn.functional.interpolate(
            grid.permute(0, 3, 1, 2),
            size=(grid_height, grid_width),
            mode="bicubic",
            align_corners=False,
        )
        return resized.permute(0, 2, 3, 1).reshape(1, grid_height * grid_width, -1)


def gather_tokens(tokens: Tensor, idx_keep: Tensor) -> Tensor:
    """Select ``tokens[b, idx_keep[b]]`` for every batch element.

    Args:
        tokens: ``[B, N, D]``.
        idx_keep: ``[B, K]`` integer indices in ``[0, N)``.

    Returns:
        ``[B, K, D]``.

    Example:
        >>> tokens = torch.arange(6.0).reshape(1, 3, 2)
        >>> gather_tokens(tokens, torch.tensor([[2, 0]]))
        tensor([[[4., 5.],
                 [0., 1.]]])
    """
    if idx_keep.dim() != 2 or idx_keep.shape[0] != tokens.shape[0]:
        raise ValueError(
            f"idx_keep must have shape [B={tokens.shape[0]}, K], "
            f"got {tuple(idx_keep.shape)}"
        )
    if idx_keep.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"idx_keep must be an integer tensor, got {idx_keep.dtype}")
    num_tokens = tokens.shape[1]
    if idx_keep.numel() and (idx_keep.min() < 0 or idx_keep.max() >= num_tokens):
        raise ValueError(f"idx_keep must hold indices in [0, {num_tokens})")
    index = idx_keep.long().unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
    return tokens.gather(1, index)
