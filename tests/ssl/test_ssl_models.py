import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from pynsm.losses.msn import MSNLoss
from pynsm.losses.swav import SwaVLoss
from pynsm.ssl.momentum import cosine_schedule
from pynsm.ssl.msn import MSN, PMSN
from pynsm.ssl.swav import SwaV


@pytest.fixture(scope="module")
def digits():
    images = torch.tensor(load_digits().images[:32] / 16.0, dtype=torch.float32)
    return images.unsqueeze(1)


def _msn(cls=MSN, **kwargs):
    return cls(
        conv_width=16, projection_hidden_dim=32, projection_dim=16, n_prototypes=16,
        num_focal_views=2, **kwargs,
    )


def _swav(**kwargs):
    return SwaV(
        projection_hidden_dim=32, projection_dim=16, n_prototypes=10, num_local_crops=2,
        **kwargs,
    )


def _fixed_loss(model, batch):
    # same crops and masks every time: the loss of a fixed batch
    torch.manual_seed(1234)
    with torch.no_grad():
        return model.training_loss(batch).item()


def _train(model, batch, steps, lr=1e-3, epoch=0):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    model.on_epoch_start(epoch, 10) if hasattr(model, "on_epoch_start") else None
    for step in range(steps):
        torch.manual_seed(1234)
        loss = model.training_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        if hasattr(model, "on_after_backward"):
            model.on_after_backward(epoch)
        optimizer.step()
        model.on_after_optimizer_step(step, steps)


@pytest.mark.parametrize(
    "make", [_msn, lambda: _msn(PMSN), _swav, lambda: _swav(queue_length=64,
                                                              start_queue_at_epoch=0)],
    ids=["msn", "pmsn", "swav", "swav-queue"],
)
def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(make, digits):
    torch.manual_seed(0)
    model = make()
    batch = (digits, torch.zeros(len(digits), dtype=torch.long))
    if getattr(model, "queue", None) is not None:
        _train(model, batch, steps=2, lr=0.0)  # fill the queue first
    before = _fixed_loss(model, batch)
    _train(model, batch, steps=12)
    after = _fixed_loss(model, batch)
    assert after < before - 0.01, (before, after)


def test_msn_gradients_do_not_reach_the_target_network(digits):
    model = _msn()
    loss = model.training_loss(digits)
    loss.backward()
    target_params = list(model.target_backbone.parameters()) + list(
        model.target_projection_head.parameters()
    )
    assert all(p.grad is None and not p.requires_grad for p in target_params)
    assert all(p.grad is not None for p in model.backbone.parameters())
    assert model.prototypes.weight.grad is not None
    assert not model.encode_target(digits).requires_grad


def test_msn_target_follows_the_anchor_by_ema(digits):
    model = _msn(momentum=0.9)
    optimizer = torch.optim.SGD(model.backbone.parameters(), lr=0.5)
    model.training_loss(digits).backward()
    target_before = [p.clone() for p in model.target_backbone.parameters()]
    optimizer.step()
    # the loss step alone leaves the target untouched
    target_after = model.target_backbone.parameters()
    assert all(torch.equal(a, b) for a, b in zip(target_before, target_after))
    model.on_after_optimizer_step(step=3, total_steps=10)
    m = cosine_schedule(3, 10, 0.9, 1.0)
    for old, new, online in zip(
        target_before, model.target_backbone.parameters(), model.backbone.parameters()
    ):
        torch.testing.assert_close(new, m * old + (1 - m) * online)


def test_msn_feeds_view_major_anchors_to_the_loss(digits):
    seen = {}

    class Recorder(nn.Module):
        def forward(self, anchors, targets, prototypes, target_sharpen_temperature):
            seen.update(anchors=anchors.shape, targets=targets.shape,
                        prototypes=prototypes, sharpen=target_sharpen_temperature)
            return anchors.sum() * 0

    model = MSN(conv_width=8, projection_dim=16, n_prototypes=12, num_focal_views=3,
                target_sharpen_temperature=0.3, criterion=Recorder())
    model.training_loss(digits[:8])
    assert seen["anchors"] == (8 * (1 + 3), 16) and seen["targets"] == (8, 16)
    assert seen["prototypes"] is model.prototypes.weight and seen["sharpen"] == 0.3


def test_default_criteria_get_the_model_arguments():
    msn = MSN(temperature=0.2, sinkhorn_iterations=5, regularization_weight=0.5)
    assert isinstance(msn.criterion, MSNLoss)
    assert (msn.criterion.temperature, msn.criterion.sinkhorn_iterations) == (0.2, 5)
    assert msn.criterion.regularization_weight == 0.5
    assert msn.criterion.target_distribution == "uniform"
    pmsn = PMSN()
    assert pmsn.criterion.target_distribution == "power_law"
    assert pmsn.criterion.power_law_exponent == 0.25

    def uniform(mean_probabilities):
        return torch.full_like(mean_probabilities, 1 / mean_probabilities.numel())

    assert PMSN(target_distribution=uniform).criterion.target_distribution is uniform
    swav = SwaV(temperature=0.2, sinkhorn_iterations=4, sinkhorn_epsilon=0.1)
    assert isinstance(swav.criterion, SwaVLoss)
    assert swav.criterion.temperature == 0.2
    assert (swav.criterion.sinkhorn_iterations, swav.criterion.sinkhorn_epsilon) == (
        4, 0.1)


def test_swav_prototypes_frozen_in_the_first_epoch_and_normalised(digits):
    model = _swav(n_epochs_frozen_prototypes=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    before = model.prototypes.heads[0].weight.detach().clone()
    for epoch, should_change in [(0, False), (1, True)]:
        model.on_epoch_start(epoch, 2)
        optimizer.zero_grad()
        model.training_loss(digits).backward()
        model.on_after_backward(epoch)
        optimizer.step()
        model.on_after_optimizer_step(epoch, 2)
        weight = model.prototypes.heads[0].weight
        # (normalising unit rows may flip the last bit, hence allclose)
        changed = not torch.allclose(weight, before, rtol=0, atol=1e-6)
        assert changed is should_change
        torch.testing.assert_close(weight.norm(dim=1), torch.ones(10))


def test_swav_uses_the_queue_from_the_start_epoch(digits):
    calls = []

    class Recorder(nn.Module):
        def forward(self, high, low, queue=None):
            calls.append(None if queue is None else [tuple(q.shape) for q in queue])
            return SwaVLoss()(high, low, queue)

    model = _swav(queue_length=48, start_queue_at_epoch=1)
    model.criterion = Recorder()
    for epoch in range(3):
        model.on_epoch_start(epoch, 3)
        model.training_loss(digits)
    assert calls == [None, [(48, 10), (48, 10)], [(48, 10), (48, 10)]]
    # the queue holds the last normalised global features (32 per call, FIFO)
    stored = model.queue.banks[0].bank  # [queue_length, dim]
    torch.testing.assert_close(stored.norm(dim=1), torch.ones(48))


def test_swav_embed_and_custom_backbone(digits):
    backbone = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = SwaV(backbone=backbone, projection_dim=8, n_prototypes=5)
    assert model.backbone is backbone
    assert model.embed(digits).shape == (32, 8)
    model.training_loss(digits).backward()


def test_ssl_models_reject_bad_batches(digits):
    for model in [_msn(), _swav()]:
        with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
            model.training_loss(torch.rand(4, 3, 8, 8))
        with pytest.raises(TypeError, match="batch"):
            model.training_loss([None])
    with pytest.raises(ValueError, match="mask_ratio"):
        _msn(mask_ratio=1.0)
    with pytest.raises(ValueError, match="queue_length"):
        _swav(queue_length=-1)


def test_embed_shapes(digits):
    # conv backbones: 2 * width channels on a readout_grid x readout_grid grid
    assert _msn().embed(digits).shape == (32, 32 * 9)
    assert _msn(readout_grid=1).embed(digits).shape == (32, 32)
    assert _swav().embed(digits).shape == (32, 64 * 9)
    assert _swav(readout_grid=2).embed(digits).shape == (32, 64 * 4)


@pytest.mark.parametrize("size, channels", [(12, 3), (28, 1), (7, 2)])
@pytest.mark.parametrize("backbone", ["conv", "vit"])
def test_models_on_other_image_sizes(size, channels, backbone):
    images = torch.rand(6, channels, size, size)
    msn = MSN(in_channels=channels, image_size=size, embed_dim=16, num_heads=2,
              conv_width=8, backbone=backbone, projection_hidden_dim=16,
              projection_dim=8, n_prototypes=8, num_focal_views=1)
    assert size % msn.patch_size == 0
    assert torch.isfinite(msn.training_loss(images))
    assert msn.embed(images).shape == (6, 16 * (9 if backbone == "conv" else 1))
    swav = SwaV(in_channels=channels, image_size=size, projection_hidden_dim=16,
                projection_dim=8, n_prototypes=5, num_local_crops=1)
    assert torch.isfinite(swav.training_loss(images))


def test_default_patch_size():
    from pynsm.ssl.msn import default_patch_size

    assert [default_patch_size(s) for s in (8, 16, 28, 32, 7, 6)] == [2, 4, 7, 8, 1, 2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_models_and_crops_run_on_cuda(digits):
    from pynsm.data.multicrop import MultiCrop

    images = digits.cuda()
    generator = torch.Generator(device="cuda").manual_seed(0)
    views = MultiCrop(num_local=2)(images, generator=generator)
    assert all(v.is_cuda for v in views)
    for model in [_msn(), _swav(queue_length=32, start_queue_at_epoch=0)]:
        model = model.cuda()
        model.training_loss(images).backward()
        model.on_after_optimizer_step(0, 1)
        assert model.embed(images).is_cuda
