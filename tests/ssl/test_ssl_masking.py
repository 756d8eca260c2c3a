import pytest
import torch

from pynsm.ssl.masking import num_kept_tokens, random_token_mask


@pytest.mark.parametrize(
    "num_tokens, mask_ratio, expected_keep",
    [(16, 0.0, 16), (16, 0.15, 14), (16, 0.5, 8), (16, 0.75, 4), (4, 0.15, 4),
     (3, 0.99, 1), (10, 0.6, 4)],
)
def test_keeps_exactly_the_requested_number(num_tokens, mask_ratio, expected_keep):
    assert num_kept_tokens(num_tokens, mask_ratio) == expected_keep
    idx_keep, idx_mask = random_token_mask((5, num_tokens), mask_ratio)
    assert idx_keep.shape == (5, expected_keep)
    assert idx_mask.shape == (5, num_tokens - expected_keep)
    assert idx_keep.dtype == torch.int64


def test_kept_and_masked_partition_every_row():
    idx_keep, idx_mask = random_token_mask((50, 16), mask_ratio=0.4)
    together = torch.cat([idx_keep, idx_mask], dim=1).sort(dim=1).values
    assert torch.equal(together, torch.arange(16).expand(50, -1))
    # sorted within each part
    assert torch.all(idx_keep.diff(dim=1) > 0)


def test_every_token_equally_likely_to_be_kept():
    idx_keep, _ = random_token_mask((4000, 8), mask_ratio=0.5)
    counts = torch.bincount(idx_keep.flatten(), minlength=8).float() / 4000
    # each token is kept with probability 4/8; std of the mean ≈ 0.008
    assert torch.allclose(counts, torch.full((8,), 0.5), atol=0.04)
    # rows are not all the same mask
    assert len({tuple(row.tolist()) for row in idx_keep[:50]}) > 10


def test_generator_makes_masks_reproducible():
    first = random_token_mask((6, 16), 0.5, generator=torch.Generator().manual_seed(3))
    second = random_token_mask((6, 16), 0.5, generator=torch.Generator().manual_seed(3))
    other = random_token_mask((6, 16), 0.5, generator=torch.Generator().manual_seed(4))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], other[0])


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_bad_mask_ratio(ratio):
    with pytest.raises(ValueError, match="mask_ratio"):
        random_token_mask((2, 16), ratio)


def test_bad_size():
    with pytest.raises(ValueError, match="size"):
        random_token_mask((2,), 0.5)
    with pytest.raises(ValueError, match="num_tokens"):
        random_token_mask((2, 0), 0.5)
