"""``view_size``: SSL models trained on views smaller than their images."""

import pytest
import torch
from torch import nn

from pynsm.ssl.msn import MSN, PMSN
from pynsm.ssl.swav import SwaV
from pynsm.ssl.views import check_view_size, resize_to_view

MODELS = {
    "msn": lambda **kw: MSN(1, 28, patch_size=2, **kw),
    "pmsn": lambda **kw: PMSN(1, 28, patch_size=2, **kw),
    "swav": lambda **kw: SwaV(1, 28, **kw),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_views_have_the_view_size_and_training_runs(name):
    torch.manual_seed(0)
    model = MODELS[name](view_size=14)
    assert model.multicrop.global_size == 14
    assert model.multicrop.local_size in (6, 7)  # half the view (whole patches)
    views = model.multicrop(torch.rand(3, 1, 28, 28))
    assert views[0].shape == (3, 1, 14, 14)
    loss = model.training_loss(torch.rand(8, 1, 28, 28))
    loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_embed_reads_the_image_averaged_down_to_the_view(name):
    torch.manual_seed(0)
    model = MODELS[name](view_size=14).eval()
    x = torch.rand(5, 1, 28, 28)
    halved = nn.functional.avg_pool2d(x, 2)  # 2x2 means: the area resampling
    expected = model.backbone.pooled_features(halved, model.readout_grid)
    torch.testing.assert_close(model.embed(x), expected)
    # without view_size the images are read at their own size
    full = MODELS[name]().eval()
    torch.testing.assert_close(
        full.embed(x), full.backbone.pooled_features(x, full.readout_grid)
    )


def test_a_whole_image_crop_equals_the_embed_resampling():
    # the training views and the readout see the same pixels at the same scale
    from pynsm.data.multicrop import random_resized_crop

    x = torch.rand(4, 1, 28, 28, dtype=torch.float64)
    crop = random_resized_crop(x, 14, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    torch.testing.assert_close(crop, resize_to_view(x, 14))


def test_msn_patches_follow_the_view():
    assert MSN(1, 28, view_size=14).patch_size == 7  # a 2x2 grid of 14x14 views
    with pytest.raises(ValueError, match=r"patch_size \(4\) must divide the view"):
        MSN(1, 28, view_size=14, patch_size=4)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_bad_view_sizes_are_refused(name):
    with pytest.raises(ValueError, match=r"view_size \(30\) must not exceed"):
        MODELS[name](view_size=30)
    with pytest.raises(ValueError, match="view_size"):
        MODELS[name](view_size=1)


def test_check_view_size_defaults_to_the_image():
    assert check_view_size(None, 28) == 28
    assert check_view_size(28, 28) == 28
    with pytest.raises(TypeError, match="view_size"):
        check_view_size(14.0, 28)
