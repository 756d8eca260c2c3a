import math

import pytest
import torch

from pynsm.data.multicrop import MultiCrop, random_resized_crop


def _ramp(size, axis):
    ramp = torch.arange(size, dtype=torch.float32)
    image = ramp.view(1, -1) if axis == "x" else ramp.view(-1, 1)
    return image.expand(size, size).reshape(1, 1, size, size).repeat(6, 1, 1, 1)


def test_shapes_and_ranges():
    images = torch.rand(7, 3, 8, 8)
    views = MultiCrop(global_size=8, local_size=4, num_local=5)(images)
    assert [tuple(v.shape) for v in views] == [(7, 3, 8, 8)] * 2 + [(7, 3, 4, 4)] * 5
    for view in views:
        assert view.min() >= images.min() - 1e-6 and view.max() <= images.max() + 1e-6
    assert MultiCrop(num_local=0)(images[:, :1]).__len__() == 2


def test_deterministic_under_a_generator():
    images = torch.rand(4, 1, 8, 8)
    crops = MultiCrop(num_local=3, intensity_jitter=0.2)
    first = crops(images, generator=torch.Generator().manual_seed(5))
    second = crops(images, generator=torch.Generator().manual_seed(5))
    third = crops(images, generator=torch.Generator().manual_seed(6))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not all(torch.equal(a, c) for a, c in zip(first, third))


def test_whole_image_crop_is_identity_and_flip_is_exact():
    images = torch.rand(20, 2, 8, 8)
    kwargs = dict(size=8, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.equal(random_resized_crop(images, **kwargs), images)
    flipped = random_resized_crop(images, flip_p=1.0, **kwargs)
    torch.testing.assert_close(flipped, images.flip(-1), rtol=0, atol=1e-6)
    half = random_resized_crop(images, flip_p=0.5, **kwargs)
    is_flip = [torch.allclose(h, f, atol=1e-6) for h, f in zip(half, flipped)]
    is_same = [torch.equal(h, x) for h, x in zip(half, images)]
    assert all(a != b for a, b in zip(is_flip, is_same))  # exactly one of the two
    assert 0 < sum(is_flip) < 20


@pytest.mark.parametrize("area", [0.25, 0.5])
def test_crop_geometry_matches_the_drawn_area(area):
    # on a ramp, interior output steps equal (crop side / output side) input pixels
    size = 16
    for axis, dim in [("x", -1), ("y", -2)]:
        images = _ramp(size, axis)
        out = random_resized_crop(images, size=8, scale=(area, area), ratio=(1.0, 1.0))
        steps = out.diff(dim=dim)
        low, high = out.narrow(dim, 0, 7), out.narrow(dim, 1, 7)
        interior = (low > 0.01) & (high < size - 1.01)
        expected = math.sqrt(area) * size / 8
        torch.testing.assert_close(
            steps[interior], torch.full_like(steps[interior], expected)
        )


def test_flip_reverses_the_ramp():
    images = _ramp(8, "x")
    out = random_resized_crop(images, 8, scale=(0.5, 0.5), ratio=(1.0, 1.0), flip_p=1.0)
    assert torch.all(out.diff(dim=-1) <= 1e-6)


def test_intensity_jitter_is_clamped():
    images = torch.rand(50, 1, 8, 8)
    views = MultiCrop(intensity_jitter=0.5, num_local=1)(images)
    assert all(v.min() >= 0 and v.max() <= 1 for v in views)
    plain = MultiCrop(num_local=1)(images, generator=torch.Generator().manual_seed(0))
    jittered = MultiCrop(num_local=1, intensity_jitter=0.5)(
        images, generator=torch.Generator().manual_seed(0)
    )
    assert not torch.allclose(plain[0], jittered[0])


def test_bad_arguments():
    with pytest.raises(ValueError, match="images"):
        random_resized_crop(torch.rand(8, 8), 4)
    with pytest.raises(ValueError, match="images"):
        random_resized_crop(torch.zeros(1, 1, 8, 8, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="scale"):
        random_resized_crop(torch.rand(1, 1, 8, 8), 4, scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="flip_p"):
        MultiCrop(flip_p=2.0)
    with pytest.raises(ValueError, match="num_local"):
        MultiCrop(num_local=-1)
    with pytest.raises(ValueError, match="local_size"):
        MultiCrop(local_size=0)
