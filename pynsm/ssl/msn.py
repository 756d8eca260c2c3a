"""MSN and PMSN: masked siamese networks with (power-law) prototype priors."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Union

import torch
from torch import Tensor, nn

from pynsm.data.multicrop import MultiCrop
from pynsm.losses.msn import MSNLoss
from pynsm.ssl._ssl_batch import images_from_batch
from pynsm.ssl.convnet import SmallConvNet, infer_feature_dim
from pynsm.ssl.heads import MSNProjectionHead, MSNPrototypes
from pynsm.ssl.masking import random_token_mask
from pynsm.ssl.momentum import (
    cosine_schedule,
    deactivate_requires_grad,
    update_momentum,
)
from pynsm.ssl.views import check_view_size, resize_to_view
from pynsm.ssl.vit import MaskedVisionTransformer
from pynsm.validation import check_choice, check_float, check_int

TargetDistribution = Union[str, Callable[[Tensor], Tensor]]


class MSN(nn.Module):
    """A ready Masked Siamese Network (Assran et al., 2022, arXiv:2204.07141).

    Each batch becomes 2 global crops and ``num_focal_views`` small focal crops
    (:class:`~pynsm.data.multicrop.MultiCrop`, no horizontal flips by default:
    mirrored digits are other symbols). The *target* network — an exponential moving
    average of the anchor network, never trained by gradients — encodes the first
    global crop whole. The *anchor* network (:attr:`backbone` plus
    :attr:`projection_head`) encodes the second global crop and the focal crops with
    a random ``mask_ratio`` of their ``patch_size × patch_size`` patches dropped.
    ``MSNLoss`` asks the anchors' prototype assignments to match the sharpened,
    Sinkhorn-balanced assignments of the target, with a mean-entropy (or
    target-distribution) regulariser.

    The default backbone is a small convolutional network
    (:class:`~pynsm.ssl.convnet.SmallConvNet`) whose anchor masking zeroes the
    dropped patches (:func:`~pynsm.ssl.masking.mask_image_patches`); the paper's
    vision transformer is ``backbone="vit"``. On 8×8 digits the convolutional
    anchor is what makes MSN learn: after the same 50 epochs its features give a
    1-shot linear probe of 74% against 36% for the ViT (raw pixels: 60–65%), and
    the ViT's whole-image assignments stay almost uniform (mean per-image entropy
    3.6 nats of ``log 64 = 4.2``), so its targets carry little signal.

    After every optimizer step the target moves towards the anchor with a momentum
    raised from ``momentum`` to 1 along a cosine schedule.

    This is a task for :class:`pynsm.train.Trainer`: ``training_loss(batch)``,
    ``on_after_optimizer_step`` and ``embed`` (anchor-backbone features).

    Args:
        in_channels: Image channels.
        image_size: Side of the (square) training images.
        patch_size: Side of the masked patches (ViT: of the patch tokens); must
            divide the view size and the focal size. By default the divisor of
            the view size giving a grid of about 4×4 patches (2 for 8×8 digits, 7
            for 28×28 images).
        embed_dim: ViT width (its feature size); ``backbone="vit"`` only.
        depth: Number of ViT blocks; ``backbone="vit"`` only.
        num_heads: ViT attention heads; ``backbone="vit"`` only.
        projection_hidden_dim: Hidden width of the projection head.
        projection_dim: Dimension of projections and prototypes.
        n_prototypes: Number of prototypes.
        mask_ratio: Fraction of patches dropped from anchor views, in ``[0, 1)``.
        momentum: Initial EMA momentum of the target network.
        num_focal_views: Number of focal (small) anchor crops per image.
        focal_size: Side of the focal crops (default half the view size).
        multicrop: A custom :class:`~pynsm.data.multicrop.MultiCrop` (overrides
            ``num_focal_views``, ``focal_size`` and ``flip_p``).
        temperature: ``MSNLoss`` temperature.
        sinkhorn_iterations: ``MSNLoss`` Sinkhorn iterations on the targets.
        regularization_weight: ``MSNLoss`` weight of the regulariser.
        target_distribution: ``"uniform"`` (MSN), ``"power_law"`` (PMSN) or a
            callable mapping mean anchor probabilities ``(K,)`` to a target.
        power_law_exponent: Exponent of the power-law target distribution.
        target_sharpen_temperature: Sharpening temperature of the target assignments.
        gather_distributed: Gather target probabilities of all processes.
        backbone: ``"conv"`` (default; ``None`` means the same),
            ``"vit"`` (:class:`~pynsm.ssl.vit.MaskedVisionTransformer`) or a module
            ``(images, idx_keep=None) → [B, F]`` (``F`` is found by a dry run).
        criterion: A custom loss with ``MSNLoss``'s forward contract.
        conv_width: Width of the convolutional backbone (features: ``2 ·
            conv_width``); ``backbone="conv"`` only.
        flip_p: Probability of a horizontal flip of each view (0 for digits and
            text; 0.5 for natural images).
        readout_grid: :meth:`embed` of a :class:`~pynsm.ssl.convnet.SmallConvNet`
            backbone averages its last feature map over a ``readout_grid ×
            readout_grid`` grid (``2 · conv_width · readout_grid²`` features; 1:
            the global average the projection head sees). Other backbones ignore it.
        view_size: Side of the global views (default ``image_size``; the focal
            views and the default ``patch_size`` follow it). A smaller side trains
            faster on large images: the global crops are resampled to it, and
            :meth:`embed` averages whole images down to it
            (:func:`~pynsm.ssl.views.resize_to_view`), so readouts see the scale
            the network was trained on. On 28×28 MNIST ``view_size=14`` costs a
            quarter of the convolutions.

    Example:
        >>> model = MSN(in_channels=1, image_size=8)
        >>> loss = model.training_loss(torch.rand(16, 1, 8, 8))
        >>> loss.backward()
        >>> model.on_after_optimizer_step(step=0, total_steps=10)
        >>> model.embed(torch.rand(3, 1, 8, 8)).shape  # 64 channels on a 3×3 grid
        torch.Size([3, 576])
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 8,
        patch_size: int | None = None,
        embed_dim: int = 64,
        depth: int = 2,
        num_heads: int = 4,
        projection_hidden_dim: int = 128,
        projection_dim: int = 32,
        n_prototypes: int = 64,
        mask_ratio: float = 0.15,
        momentum: float = 0.996,
        num_focal_views: int = 4,
        focal_size: int | None = None,
        multicrop: MultiCrop | None = None,
        temperature: float = 0.1,
        sinkhorn_iterations: int = 3,
        regularization_weight: float = 1.0,
        target_distribution: TargetDistribution = "uniform",
        power_law_exponent: float = 0.25,
        target_sharpen_temperature: float = 0.25,
        gather_distributed: bool = False,
        backbone: nn.Module | str | None = "conv",
        criterion: nn.Module | None = None,
        conv_width: int = 32,
        flip_p: float = 0.0,
        readout_grid: int = 3,
        view_size: int | None = None,
    ) -> None:
        super().__init__()
        in_channels = check_int("in_channels", in_channels, minimum=1)
        image_size = check_int("image_size", image_size, minimum=1)
        view_size = check_view_size(view_size, image_size)
        mask_ratio = check_float("mask_ratio", mask_ratio, minimum=0.0)
        if not mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio!r}")
        momentum = check_float("momentum", momentum, minimum=0.0, maximum=1.0)
        flip_p = check_float("flip_p", flip_p, minimum=0.0, maximum=1.0)
        self.readout_grid = check_int("readout_grid", readout_grid, minimum=1)
        target_sharpen_temperature = check_float(
            "target_sharpen_temperature",
            target_sharpen_temperature,
            minimum=0.0,
            strict=True,
        )
        self.in_channels = in_channels
        self.image_size = image_size
        self.view_size = view_size
        self.mask_ratio = mask_ratio
        self.momentum = momentum
        self.target_sharpen_temperature = target_sharpen_temperature
        if patch_size is None:
            patch_size = default_patch_size(view_size)
        patch_size = check_int("patch_size", patch_size, minimum=1)
        if backbone is None or isinstance(backbone, str):
            kind = check_choice("backbone", backbone or "conv", ("conv", "vit"))
            if kind == "conv":
                if view_size % patch_size:
                    raise ValueError(
                        f"patch_size ({patch_size}) must divide the view size "
                        f"({view_size})"
                    )
                backbone = SmallConvNet(in_channels, conv_width, patch_size)
            else:
                backbone = MaskedVisionTransformer(
                    image_size=view_size,
                    patch_size=patch_size,
                    in_channels=in_channels,
                    embed_dim=embed_dim,
                    depth=depth,
                    num_heads=num_heads,
                )
        elif not isinstance(backbone, nn.Module):
            raise TypeError(
                "backbone must be 'conv', 'vit' or an nn.Module, got "
                f"{type(backbone).__name__}"
            )
        self.backbone = backbone
        self.patch_size = getattr(backbone, "patch_size", patch_size)
        feature_dim = infer_feature_dim(backbone, in_channels, view_size)
        self.projection_head = MSNProjectionHead(
            feature_dim, projection_hidden_dim, projection_dim
        )
        self.target_backbone = copy.deepcopy(self.backbone)
        self.target_projection_head = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.target_backbone)
        deactivate_requires_grad(self.target_projection_head)
        self.prototypes = MSNPrototypes(projection_dim, n_prototypes)
        if multicrop is None:
            if focal_size is None:
                focal_size = _default_focal_size(view_size, self.patch_size)
            multicrop = MultiCrop(
                global_size=view_size,
                local_size=focal_size,
                num_local=num_focal_views,
                flip_p=flip_p,
            )
        self.multicrop = multicrop
        if criterion is None:
            criterion = MSNLoss(
                temperature=temperature,
                sinkhorn_iterations=sinkhorn_iterations,
                regularization_weight=regularization_weight,
                target_distribution=target_distribution,
                power_law_exponent=power_law_exponent,
                gather_distributed=gather_distributed,
            )
        self.criterion = criterion

    def encode_masked(self, images: Tensor) -> Tensor:
        """Anchor projections ``[B, projection_dim]`` of randomly masked ``images``."""
        grid = (images.shape[-2] // self.patch_size) * (
            images.shape[-1] // self.patch_size
        )
        idx_keep, _ = random_token_mask(
            (images.shape[0], grid), self.mask_ratio, device=images.device
        )
        return self.projection_head(self.backbone(images, idx_keep=idx_keep))

    @torch.no_grad()
    def encode_target(self, images: Tensor) -> Tensor:
        """Target projections ``[B, projection_dim]`` of whole ``images``."""
        return self.target_projection_head(self.target_backbone(images))

    def training_loss(self, batch: object) -> Tensor:
        """MSN loss of a batch (``images`` or ``(images, labels)``; labels unused)."""
        images = images_from_batch(batch, self.in_channels)
        views = self.multicrop(images)
        targets = self.encode_target(views[0])
        anchors = [self.encode_masked(views[1])]
        if len(views) > 2:
            # focal crops share one pass; the result is view-major as MSNLoss expects
            anchors.append(self.encode_masked(torch.cat(views[2:])))
        return self.criterion(
            torch.cat(anchors),
            targets,
            self.prototypes.weight,
            target_sharpen_temperature=self.target_sharpen_temperature,
        )

    def on_after_optimizer_step(self, step: int, total_steps: int) -> None:
        """Move the target network towards the anchor (cosine momentum schedule)."""
        m = cosine_schedule(step, max(total_steps, 1), self.momentum, 1.0)
        update_momentum(self.backbone, self.target_backbone, m)
        update_momentum(self.projection_head, self.target_projection_head, m)

    def embed(self, x: Tensor) -> Tensor:
        """Anchor-backbone features ``[B, F]`` of whole, unmasked images (readouts).

        With the default :class:`~pynsm.ssl.convnet.SmallConvNet` these are its last
        feature map averaged over a ``readout_grid × readout_grid`` grid (digits,
        100 epochs, 1-/5-shot linear probes: 78.6%/94.7% on a 3×3 grid against
        75.7%/93.3% for the global average); any other backbone gives its output,
        flattened.

        The anchor backbone is the one trained by gradients; the momentum target
        lags behind it (global-average features, 1-shot: anchor 73.7% vs target
        69.3% after 50 epochs). The backbone, not the projection, is read out: it
        keeps more of the image (effective rank about 37 of 64 against 18 of 32)
        and gives the better 5-shot and all-label readouts.

        With ``view_size < image_size`` the images are first averaged down to
        ``view_size × view_size``.
        """
        if self.view_size != self.image_size:
            x = resize_to_view(x, self.view_size)
        return _readout(self.backbone, x, self.readout_grid)


class PMSN(MSN):
    """MSN with a prior on the cluster sizes (Assran et al., 2022, arXiv:2210.07277).

    Identical to :class:`MSN` (same convolutional anchor, views and readout)
    except for the default ``target_distribution``: ``"power_law"`` with
    ``power_law_exponent=0.25`` suits long-tailed data; any target distribution
    ``MSNLoss`` accepts (``"uniform"`` or a callable) can be given. On the
    class-balanced digits the mild default prior costs nothing: after 100 epochs
    PMSN's global-average features give 76.9%/93.8% 1-/5-shot linear probes
    against MSN's 75.7%/93.3%.

    Example:
        >>> model = PMSN(in_channels=1, image_size=8)
        >>> model.training_loss(torch.rand(16, 1, 8, 8)).shape
        torch.Size([])
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 8,
        target_distribution: TargetDistribution = "power_law",
        power_law_exponent: float = 0.25,
        **kwargs: object,
    ) -> None:
        super().__init__(
            in_channels=in_channels,
            image_size=image_size,
            target_distribution=target_distribution,
            power_law_exponent=power_law_exponent,
            **kwargs,
        )


def _readout(backbone: nn.Module, images: Tensor, grid: int) -> Tensor:
    # conv backbones: the feature map pooled to a coarse grid; others: their output
    if isinstance(backbone, SmallConvNet):
        return backbone.pooled_features(images, grid)
    return backbone(images).flatten(1)


def default_patch_size(image_size: int) -> int:
    """The patch side giving a grid closest to 4×4 patches (ties: more patches).

    Example:
        >>> [default_patch_size(size) for size in (8, 28, 32, 7)]
        [2, 7, 8, 1]
    """
    divisors = [p for p in range(1, image_size + 1) if image_size % p == 0]
    return min(divisors, key=lambda p: (abs(image_size // p - 4), p))


def _default_focal_size(image_size: int, patch_size: int) -> int:
    # half the image, rounded down to whole patches (at least one patch)
    return max(patch_size, (image_size // 2) // patch_size * patch_size)
