"""Pixel-space patch masking, the masked convolutional anchor and the digit defaults."""

import pytest
import torch
from torch import nn

from pynsm.ssl import MSN, PMSN, MaskedVisionTransformer, SmallConvNet, SwaV
from pynsm.ssl.masking import mask_image_patches, random_token_mask
from pynsm.ssl.vit import gather_tokens


def test_mask_image_patches_keeps_exactly_the_listed_patches():
    images = torch.rand(3, 2, 8, 8) + 0.5  # no zero pixel before masking
    idx_keep, idx_mask = random_token_mask((3, 16), mask_ratio=0.5)
    masked = mask_image_patches(images, idx_keep, patch_size=2)
    # patch (r, c) of a 4×4 grid holds pixels [2r:2r+2, 2c:2c+2]: number r * 4 + c
    patches = masked.unfold(2, 2, 2).unfold(3, 2, 2)  # [B, C, 4, 4, 2, 2]
    alive = patches.flatten(4).abs().sum(dim=(1, 4)).flatten(1) > 0  # [B, 16]
    expected = torch.zeros(3, 16, dtype=torch.bool).scatter_(1, idx_keep, True)
    assert torch.equal(alive, expected)
    kept = torch.zeros(3, 16).scatter_(1, idx_keep, 1.0).bool()
    kept_pixels = (
        kept.view(3, 1, 4, 1, 4, 1).expand(3, 2, 4, 2, 4, 2).reshape(3, 2, 8, 8)
    )
    assert torch.equal(masked[kept_pixels], images[kept_pixels])
    assert idx_mask.shape == (3, 8)


def test_mask_image_patches_numbers_patches_like_the_vit_tokens():
    # a linear patch embedding of a masked image, at a kept position, equals the
    # token the ViT gathers there: both number patches row-major
    vit = MaskedVisionTransformer(image_size=8, patch_size=2, embed_dim=8, num_heads=2)
    images = torch.rand(2, 1, 8, 8)
    idx_keep = torch.tensor([[0, 5, 15], [3, 4, 12]])
    tokens = gather_tokens(vit.tokenize(images), idx_keep)
    masked_tokens = gather_tokens(
        vit.tokenize(mask_image_patches(images, idx_keep, 2)), idx_keep
    )
    torch.testing.assert_close(masked_tokens, tokens)


def test_mask_image_patches_rejects_bad_input():
    images = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="patch_size"):
        mask_image_patches(images, torch.zeros(2, 1, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="idx_keep"):
        mask_image_patches(images, torch.zeros(3, 1, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="idx_keep"):
        mask_image_patches(images, torch.full((2, 1), 16), 2)
    with pytest.raises(TypeError, match="idx_keep"):
        mask_image_patches(images, torch.zeros(2, 1), 2)


def test_conv_net_with_idx_keep_sees_only_the_kept_patches():
    net = SmallConvNet(1, width=4, patch_size=2).eval()
    images = torch.rand(2, 1, 8, 8)
    everything = torch.arange(16).repeat(2, 1)
    torch.testing.assert_close(net(images, idx_keep=everything), net(images))
    idx_keep = torch.tensor([[0, 1, 2, 3], [12, 13, 14, 15]])
    changed = images.clone()
    changed[:, :, 2:6] = torch.rand(2, 1, 4, 8)  # rows of patches 4..11 only
    torch.testing.assert_close(
        net(changed, idx_keep=idx_keep), net(images, idx_keep=idx_keep)
    )
    assert not torch.allclose(net(changed), net(images))


def test_conv_net_checks_its_arguments():
    with pytest.raises(TypeError, match="width"):
        SmallConvNet(1, width=2.5)
    with pytest.raises(ValueError, match="patch_size"):
        SmallConvNet(1, patch_size=0)


def test_msn_defaults_to_a_masked_conv_anchor_and_no_flips():
    model = MSN()
    assert isinstance(model.backbone, SmallConvNet)
    assert isinstance(model.target_backbone, SmallConvNet)
    assert model.backbone is not model.target_backbone
    assert model.multicrop.flip_p == 0.0
    assert model.embed(torch.rand(3, 1, 8, 8)).shape == (
        3,
        9 * model.backbone.output_dim,
    )
    assert MSN(conv_width=8, readout_grid=1).embed(torch.rand(3, 1, 8, 8)).shape == (
        3,
        16,
    )
    vit = MSN(backbone="vit", embed_dim=16, num_heads=2)
    assert isinstance(vit.backbone, MaskedVisionTransformer)
    assert vit.embed(torch.rand(3, 1, 8, 8)).shape == (3, 16)
    assert isinstance(PMSN().backbone, SmallConvNet)


def test_msn_conv_anchor_ignores_the_masked_patches():
    torch.manual_seed(0)
    model = MSN(projection_hidden_dim=16, projection_dim=8, mask_ratio=0.5).eval()
    images = torch.rand(4, 1, 8, 8)
    torch.manual_seed(1)
    idx_keep, _ = random_token_mask((4, 16), 0.5)
    kept = torch.zeros(4, 16).scatter_(1, idx_keep, 1.0).bool()
    pixels = kept.view(4, 1, 4, 1, 4, 1).expand(4, 1, 4, 2, 4, 2).reshape(4, 1, 8, 8)
    noisy = torch.where(pixels, images, torch.rand_like(images))
    outputs = []
    for batch in (images, noisy):
        torch.manual_seed(1)  # the same mask as idx_keep above
        outputs.append(model.encode_masked(batch))
    torch.testing.assert_close(outputs[0], outputs[1])


def test_flip_is_an_option_and_arguments_are_checked():
    assert MSN(flip_p=0.5).multicrop.flip_p == 0.5
    assert SwaV().multicrop.flip_p == 0.0
    assert SwaV(flip_p=0.5).multicrop.flip_p == 0.5
    assert SwaV(conv_width=8).embed(torch.rand(2, 1, 8, 8)).shape == (2, 16 * 9)
    with pytest.raises(ValueError, match="backbone"):
        MSN(backbone="resnet")
    with pytest.raises(TypeError, match="backbone"):
        MSN(backbone=3)
    with pytest.raises(ValueError, match="flip_p"):
        SwaV(flip_p=1.5)
    with pytest.raises(ValueError, match="flip_p"):
        MSN(flip_p=-0.1)
    with pytest.raises(TypeError, match="in_channels"):
        SwaV(in_channels=1.0)
    with pytest.raises(ValueError, match="patch_size"):
        MSN(image_size=8, patch_size=3)


def test_custom_backbone_feature_size_is_inferred():
    class Flat(nn.Module):
        def forward(self, images, idx_keep=None):
            return images.flatten(1)[:, :10]

    model = MSN(backbone=Flat(), projection_hidden_dim=8, projection_dim=4)
    assert model.projection_head.layers[0].in_features == 10
    assert torch.isfinite(model.training_loss(torch.rand(6, 1, 8, 8)))


def test_pooled_readout_is_the_feature_map_averaged_over_a_grid():
    net = SmallConvNet(1, width=4).eval()
    images = torch.rand(5, 1, 8, 8)
    maps = net.feature_map(images)  # [5, 8, 4, 4]
    assert maps.shape == (5, 8, 4, 4)
    torch.testing.assert_close(net.pooled_features(images, 1), net(images))
    torch.testing.assert_close(net(images), maps.mean(dim=(2, 3)))
    # 2×2 grid: the four quadrants of the 4×4 map, channel-major
    quadrants = net.pooled_features(images, 2).view(5, 8, 2, 2)
    torch.testing.assert_close(quadrants[:, :, 1, 0], maps[:, :, 2:, :2].mean((2, 3)))
    # 3×3 grid of a 4×4 map: overlapping 2×2 windows with stride 1
    grid3 = net.pooled_features(images, 3).view(5, 8, 3, 3)
    torch.testing.assert_close(grid3[:, :, 1, 2], maps[:, :, 1:3, 2:4].mean((2, 3)))
    with pytest.raises(ValueError, match="grid"):
        net.pooled_features(images, 0)


def test_models_read_out_the_pooled_grid_of_their_conv_backbone():
    images = torch.rand(4, 1, 8, 8)
    for model in (MSN(conv_width=4), SwaV(conv_width=4), PMSN(conv_width=4)):
        model.eval()
        torch.testing.assert_close(
            model.embed(images), model.backbone.pooled_features(images, 3)
        )
    with pytest.raises(ValueError, match="readout_grid"):
        SwaV(readout_grid=0)
    with pytest.raises(TypeError, match="readout_grid"):
        MSN(readout_grid=2.0)
