"""Multi-crop augmentation on image tensors, batched on their device."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pynsm.validation import check_int


def _check_range(
    name: str, value: tuple[float, float], low: float, high: float
) -> None:
    if len(value) != 2 or not low < value[0] <= value[1] <= high:
        raise ValueError(
            f"{name} must be (min, max) with {low} < min <= max <= {high}, "
            f"got {value!r}"
        )


def random_resized_crop(
    images: Tensor,
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_p: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Crop a random box of every image, resize it to ``size × size``, maybe flip it.

    Per image, the box covers a fraction of the image area drawn uniformly from
    ``scale`` with a log-uniform aspect ratio from ``ratio`` (sides clipped to the
    image) at a uniformly random position; it is resampled bilinearly with one
    ``grid_sample`` call for the whole batch. A horizontal flip (probability
    ``flip_p``) mirrors the sampling grid, so it is exact. Outputs stay within the
    range of the inputs (bilinear interpolation is a convex combination).

    Args:
        images: ``[B, C, H, W]`` floating-point images.
        size: Output side.
        scale: Range of the crop area as a fraction of the image area, in ``(0, 1]``.
        ratio: Range of the crop aspect ratio (width / height).
        flip_p: Probability of a horizontal flip, in ``[0, 1]``.
        generator: Optional random generator (on the images' device).

    Returns:
        ``[B, C, size, size]``.

    Example:
        >>> images = torch.rand(4, 1, 8, 8)
        >>> same = random_resized_crop(images, 8, scale=(1.0, 1.0), ratio=(1.0, 1.0))
        >>> same.equal(images)  # the whole image, unflipped: an exact copy
        True
    """
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(
            "images must be a floating-point tensor [B, C, H, W], got "
            f"{images.dtype} of shape {tuple(images.shape)}"
        )
    size = check_int("size", size, minimum=1)
    _check_range("scale", scale, 0.0, 1.0)
    _check_range("ratio", ratio, 0.0, math.inf)
    if not 0.0 <= flip_p <= 1.0:
        raise ValueError(f"flip_p must be in [0, 1], got {flip_p!r}")
    batch = images.shape[0]
    draws = torch.rand(batch, 5, device=images.device, generator=generator)
    area = scale[0] + (scale[1] - scale[0]) * draws[:, 0]
    log_ratio = (
        math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * draws[:, 1]
    )
    aspect = log_ratio.exp()
    # half-widths in normalised coordinates ([-1, 1] spans the image)
    width = (area * aspect).sqrt().clamp(max=1.0)
    height = (area / aspect).sqrt().clamp(max=1.0)
    center_x = (1.0 - width) * (2.0 * draws[:, 2] - 1.0)
    center_y = (1.0 - height) * (2.0 * draws[:, 3] - 1.0)
    flip = torch.where(draws[:, 4] < flip_p, -1.0, 1.0)
    theta = torch.zeros(batch, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0] = width * flip
    theta[:, 0, 2] = center_x
    theta[:, 1, 1] = height
    theta[:, 1, 2] = center_y
    grid = nn.functional.affine_grid(
        theta, [batch, images.shape[1], size, size], align_corners=False
    )
    return nn.functional.grid_sample(
        images, grid, mode="bilinear", padding_mode="border", align_corners=False
    )


class MultiCrop(nn.Module):
    """Multi-crop views (SwaV, MSN): 2 global crops and ``num_local`` local crops.

    Every view is a batched :func:`random_resized_crop` with a horizontal flip; an
    optional brightness/contrast jitter multiplies each image by a factor in
    ``[1 − intensity_jitter, 1 + intensity_jitter]`` around its mean and clamps to
    ``clamp`` (default ``[0, 1]``). All randomness comes from one draw per view, so a
    seeded ``torch.Generator`` makes the views reproducible, on any device.

    Args:
        global_size: Side of the two global crops.
        local_size: Side of the local crops.
        num_local: Number of local crops (``0`` for global views only).
        global_scale: Area range of the global crops.
        local_scale: Area range of the local crops.
        ratio: Aspect-ratio range of all crops.
        flip_p: Probability of a horizontal flip.
        intensity_jitter: Strength of the intensity jitter (``0`` disables it).
        clamp: Range the jittered images are clamped to.

    Shapes:
        input ``[B, C, H, W]`` → list of ``2`` tensors ``[B, C, global_size,
        global_size]`` followed by ``num_local`` tensors ``[B, C, local_size,
        local_size]``.

    Example:
        >>> crops = MultiCrop(global_size=8, local_size=4, num_local=3)
        >>> generator = torch.Generator().manual_seed(0)
        >>> views = crops(torch.rand(5, 1, 8, 8), generator=generator)
        >>> [tuple(v.shape) for v in views]
        [(5, 1, 8, 8), (5, 1, 8, 8), (5, 1, 4, 4), (5, 1, 4, 4), (5, 1, 4, 4)]
    """

    num_global = 2

    def __init__(
        self,
        global_size: int = 8,
        local_size: int = 4,
        num_local: int = 4,
        global_scale: tuple[float, float] = (0.5, 1.0),
        local_scale: tuple[float, float] = (0.15, 0.5),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
        intensity_jitter: float = 0.0,
        clamp: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        super().__init__()
        global_size = check_int("global_size", global_size, minimum=1)
        local_size = check_int("local_size", local_size, minimum=1)
        num_local = check_int("num_local", num_local, minimum=0)
        _check_range("global_scale", global_scale, 0.0, 1.0)
        _check_range("local_scale", local_scale, 0.0, 1.0)
        _check_range("ratio", ratio, 0.0, math.inf)
        if not 0.0 <= flip_p <= 1.0:
            raise ValueError(f"flip_p must be in [0, 1], got {flip_p!r}")
        if not 0.0 <= intensity_jitter < 1.0:
            raise ValueError(
                f"intensity_jitter must be in [0, 1), got {intensity_jitter!r}"
            )
        if len(clamp) != 2 or clamp[0] >= clamp[1]:
            raise ValueError(f"clamp must be (min, max) with min < max, got {clamp!r}")
        self.global_size = global_size
        self.local_size = local_size
        self.num_local = num_local
        self.global_scale = tuple(global_scale)
        self.local_scale = tuple(local_scale)
        self.ratio = tuple(ratio)
        self.flip_p = flip_p
        self.intensity_jitter = intensity_jitter
        self.clamp = tuple(clamp)

    def forward(
        self, images: Tensor, generator: torch.Generator | None = None
    ) -> list[Tensor]:
        """Return the global views then the local views of ``images``."""
        specs = [(self.global_size, self.global_scale)] * self.num_global + [
            (self.local_size, self.local_scale)
        ] * self.num_local
        views = []
        for size, scale in specs:
            view = random_resized_crop(
                images, size, scale, self.ratio, self.flip_p, generator=generator
            )
            if self.intensity_jitter > 0:
                view = self._jitter(view, generator)
            views.append(view)
        return views

    def _jitter(self, view: Tensor, generator: torch.Generator | None) -> Tensor:
        factors = torch.rand(
            view.shape[0], 2, device=view.device, generator=generator
        ).to(view.dtype)
        factors = 1.0 + self.intensity_jitter * (2.0 * factors - 1.0)
        brightness = factors[:, 0].view(-1, 1, 1, 1)
        contrast = factors[:, 1].view(-1, 1, 1, 1)
        mean = view.mean(dim=(1, 2, 3), keepdim=True)
        jittered = (view - mean) * contrast + mean * brightness
        return jittered.clamp(*self.clamp)

    def extra_repr(self) -> str:
        return (
            f"global_size={self.global_size}, local_size={self.local_size}, "
            f"num_local={self.num_local}, flip_p={self.flip_p}"
        )
