import pytest
import torch

from pynsm.ssl.masking import random_token_mask
from pynsm.ssl.vit import MaskedVisionTransformer, gather_tokens


def _vit(**kwargs):
    torch.manual_seed(0)
    return MaskedVisionTransformer(embed_dim=32, num_heads=4, **kwargs).eval()


def test_kept_indices_equal_running_on_gathered_tokens():
    vit = _vit(image_size=8, patch_size=2)
    images = torch.rand(5, 1, 8, 8)
    idx_keep, _ = random_token_mask((5, 16), mask_ratio=0.5)
    tokens = vit.tokenize(images)
    manual = torch.stack(
        [vit.encode_tokens(tokens[b : b + 1, idx_keep[b]])[0] for b in range(5)]
    )
    torch.testing.assert_close(vit(images, idx_keep=idx_keep), manual)


def test_masked_patches_do_not_influence_the_output():
    vit = _vit(image_size=8, patch_size=4, in_channels=3)
    images = torch.rand(2, 3, 8, 8, requires_grad=True)
    idx_keep = torch.tensor([[0, 3], [1, 2]])  # patches in a 2×2 grid, row-major
    out = vit(images, idx_keep=idx_keep)
    # a random readout: a plain sum of layer-normed features is constant
    (out * torch.randn_like(out)).sum().backward()
    grad_norm = images.grad.abs().sum(dim=1)  # [B, 8, 8]
    # sample 0 keeps the top-left and bottom-right patches
    assert grad_norm[0, :4, 4:].sum() == 0 and grad_norm[0, 4:, :4].sum() == 0
    assert grad_norm[0, :4, :4].sum() > 0 and grad_norm[0, 4:, 4:].sum() > 0
    # sample 1 keeps the top-right and bottom-left patches
    assert grad_norm[1, :4, :4].sum() == 0 and grad_norm[1, 4:, 4:].sum() == 0
    assert grad_norm[1, :4, 4:].sum() > 0


def test_keeping_all_tokens_equals_no_mask_and_order_does_not_matter():
    vit = _vit(image_size=8, patch_size=2)
    images = torch.rand(3, 1, 8, 8)
    full = vit(images)
    every = torch.arange(16).expand(3, -1)
    shuffled = torch.stack([torch.randperm(16) for _ in range(3)])
    torch.testing.assert_close(vit(images, idx_keep=every), full)
    # positions are embedded before gathering, so token order is irrelevant
    torch.testing.assert_close(vit(images, idx_keep=shuffled), full, atol=1e-5, rtol=0)


def test_smaller_images_use_interpolated_positions():
    vit = _vit(image_size=8, patch_size=2)
    assert vit.tokenize(torch.rand(2, 1, 4, 4)).shape == (2, 4, 32)
    assert vit(torch.rand(2, 1, 4, 6)).shape == (2, 32)
    # a constant positional embedding stays constant after resizing
    with torch.no_grad():
        vit.pos_embed.fill_(0.5)
    assert torch.allclose(vit._positional_embedding(2, 3), torch.tensor(0.5))


def test_gather_tokens_matches_indexing():
    tokens = torch.randn(3, 5, 2)
    idx = torch.tensor([[4, 0], [1, 1], [2, 3]])
    expected = torch.stack([tokens[b, idx[b]] for b in range(3)])
    assert torch.equal(gather_tokens(tokens, idx), expected)


def test_bad_inputs():
    with pytest.raises(ValueError, match="patch_size"):
        MaskedVisionTransformer(image_size=8, patch_size=3)
    with pytest.raises(ValueError, match="num_heads"):
        MaskedVisionTransformer(embed_dim=30, num_heads=4)
    vit = _vit(image_size=8, patch_size=2)
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        vit(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="multiples of patch_size"):
        vit(torch.rand(2, 1, 7, 8))
    with pytest.raises(ValueError, match="idx_keep"):
        vit(torch.rand(2, 1, 8, 8), idx_keep=torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="indices in"):
        vit(torch.rand(2, 1, 8, 8), idx_keep=torch.full((2, 4), 16))
    with pytest.raises(TypeError, match="integer"):
        vit(torch.rand(2, 1, 8, 8), idx_keep=torch.zeros(2, 4))
