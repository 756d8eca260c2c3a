import pytest
import torch
from torch import nn

from pynsm.ssl.heads import (
    MSNProjectionHead,
    MSNPrototypes,
    ProjectionHead,
    SwaVProjectionHead,
    SwaVPrototypes,
)


def test_msn_head_layout():
    head = MSNProjectionHead(16, 32, 8)
    kinds = [type(layer) for layer in head.layers]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.GELU] * 2 + [nn.Linear]
    # linear layers followed by batch norm carry no (redundant) bias
    assert head.layers[0].bias is None and head.layers[-1].bias is not None
    assert head(torch.randn(5, 16)).shape == (5, 8)


def test_swav_head_layout():
    head = SwaVProjectionHead(16, 32, 8)
    kinds = [type(layer) for layer in head.layers]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert head(torch.randn(5, 16)).shape == (5, 8)


def test_projection_head_bad_blocks():
    with pytest.raises(ValueError, match="blocks"):
        ProjectionHead([])
    with pytest.raises(ValueError, match="output_dim"):
        ProjectionHead([(4, 0, None, None)])


def test_msn_prototypes_are_cosine_similarities():
    prototypes = MSNPrototypes(8, n_prototypes=5)
    assert prototypes.weight.shape == (5, 8) and prototypes.weight.requires_grad
    x = torch.randn(3, 8)
    expected = torch.nn.functional.cosine_similarity(
        x[:, None, :], prototypes.weight[None, :, :], dim=-1
    )
    torch.testing.assert_close(prototypes(x), expected)


def test_swav_prototypes_normalised_at_start_and_by_normalize():
    prototypes = SwaVPrototypes(8, n_prototypes=6)
    norms = prototypes.heads[0].weight.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(6))
    with torch.no_grad():
        prototypes.heads[0].weight.mul_(torch.arange(1.0, 7.0)[:, None])
    direction = nn.functional.normalize(prototypes.heads[0].weight, dim=1).clone()
    prototypes.normalize()
    torch.testing.assert_close(prototypes.heads[0].weight, direction)
    # scores of unit features are cosine similarities, so within [-1, 1]
    features = nn.functional.normalize(torch.randn(10, 8), dim=1)
    scores = prototypes(features)
    torch.testing.assert_close(scores, features @ direction.T)
    assert scores.abs().max() <= 1 + 1e-6


def test_swav_prototypes_multi_head():
    prototypes = SwaVPrototypes(8, n_prototypes=[3, 5])
    outputs = prototypes(torch.randn(2, 8))
    assert [tuple(o.shape) for o in outputs] == [(2, 3), (2, 5)]


def test_swav_prototypes_seed_style_freezing():
    prototypes = SwaVPrototypes(8, n_prototypes=4, n_steps_frozen_prototypes=2)
    x = torch.randn(3, 8)
    for step, trainable in [(0, False), (1, False), (2, True), (7, True)]:
        prototypes(x, step)
        assert all(p.requires_grad is trainable for p in prototypes.parameters())
    with pytest.raises(ValueError, match="step"):
        prototypes(x)
    # without frozen steps, no step is needed
    SwaVPrototypes(8, n_prototypes=4)(x)


def test_swav_prototypes_drop_grad_if_frozen():
    prototypes = SwaVPrototypes(8, n_prototypes=4, n_steps_frozen_prototypes=1)
    optimizer = torch.optim.SGD(prototypes.parameters(), lr=1.0, weight_decay=0.1)
    before = prototypes.heads[0].weight.detach().clone()
    prototypes.scores(torch.randn(3, 8)).pow(2).sum().backward()
    prototypes.drop_grad_if_frozen(0)
    assert all(p.grad is None for p in prototypes.parameters())
    optimizer.step()
    assert torch.equal(prototypes.heads[0].weight, before)
    prototypes.scores(torch.randn(3, 8)).pow(2).sum().backward()
    prototypes.drop_grad_if_frozen(1)
    optimizer.step()
    assert not torch.equal(prototypes.heads[0].weight, before)
    # requires_grad never changed on this path (safe under DistributedDataParallel)
    assert all(p.requires_grad for p in prototypes.parameters())


def test_swav_prototypes_bad_arguments():
    with pytest.raises(ValueError, match="n_prototypes"):
        SwaVPrototypes(8, n_prototypes=0)
    with pytest.raises(ValueError, match="n_prototypes"):
        SwaVPrototypes(8, n_prototypes=[])
    with pytest.raises(ValueError, match="n_steps_frozen_prototypes"):
        SwaVPrototypes(8, n_prototypes=3, n_steps_frozen_prototypes=-1)


def test_integral_scalars_are_accepted_and_bools_refused():
    import numpy as np

    prototypes = SwaVPrototypes(np.int64(8), n_prototypes=[np.int32(5), 3])
    assert [head.out_features for head in prototypes.heads] == [5, 3]
    assert MSNPrototypes(torch.tensor(8), np.int64(4)).weight.shape == (4, 8)
    head = MSNProjectionHead(np.int64(6), np.int64(12), np.int64(4))
    assert head(torch.randn(3, 6)).shape == (3, 4)
    with pytest.raises(TypeError, match="n_prototypes"):
        MSNPrototypes(8, True)
    with pytest.raises(TypeError, match="hidden_dim"):
        SwaVProjectionHead(8, 4.0, 4)
