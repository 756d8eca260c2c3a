"""WMSELoss and Whitening2d against a float64 transcription of W-MSE (eq. 4-6)."""

import numpy as np
import pytest
import torch

from pynsm.losses import Whitening2d, WMSELoss, norm_mse_loss, whitening_matrix


def whiten_reference(x):
    """Centre, then multiply by the inverse Cholesky factor of the unbiased
    covariance (float64)."""
    x = x.double()
    centred = x - x.mean(dim=0)
    covariance = centred.T @ centred / (x.shape[0] - 1)
    factor = torch.linalg.cholesky(covariance)
    return centred @ torch.linalg.inv(factor).T


def cosine_mse(a, b):
    a = a / a.norm(dim=1, keepdim=True)
    b = b / b.norm(dim=1, keepdim=True)
    return ((a - b) ** 2).sum(dim=1).mean().item()  # = 2 - 2 mean cos


def reference(x, num_samples, w_size, perms):
    bs = x.shape[0] // num_samples
    views = x.double().view(num_samples, bs, -1)
    total, pairs = 0.0, 0
    for perm in perms:
        z = torch.empty_like(views)
        for idx in perm.view(-1, w_size):
            for i in range(num_samples):
                z[i, idx] = whiten_reference(views[i, idx])
        for i in range(num_samples):
            for j in range(i + 1, num_samples):
                total += cosine_mse(z[i], z[j])
                pairs += 1
    return total / pairs


def test_whitening_gives_identity_covariance_and_matches_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g) @ torch.randn(6, 6, generator=g) + 3
    white = Whitening2d(6)(x)
    torch.testing.assert_close(
        white.double(), whiten_reference(x), rtol=1e-4, atol=1e-4
    )
    torch.testing.assert_close(
        torch.cov(white.T.double()), torch.eye(6).double(), atol=1e-4, rtol=0
    )


def test_whitening_is_stable_for_ill_conditioned_and_large_scale_features():
    g = torch.Generator().manual_seed(1)
    scales = torch.logspace(-3, 3, 8)
    x = torch.randn(64, 8, generator=g) * scales * 1e3
    white = Whitening2d(8)(x)
    assert torch.isfinite(white).all()
    torch.testing.assert_close(
        white.double(), whiten_reference(x), rtol=1e-3, atol=1e-3
    )


def test_running_statistics_and_eval_mode():
    g = torch.Generator().manual_seed(2)
    layer = Whitening2d(3, momentum=0.25)
    batches = [torch.randn(16, 3, generator=g) * 2 + 1 for _ in range(3)]
    mean, covariance = torch.zeros(3), torch.eye(3)
    for batch in batches:
        layer(batch)
        mean = 0.75 * mean + 0.25 * batch.mean(0)
        covariance = 0.75 * covariance + 0.25 * torch.cov(batch.T)
    torch.testing.assert_close(layer.running_mean.flatten(), mean)
    torch.testing.assert_close(layer.running_variance, covariance)
    assert layer.running_mean.shape == (1, 3, 1, 1)  # lightly's buffer layout
    layer.eval()
    x = torch.randn(5, 3, generator=g)
    expected = (x - mean) @ torch.linalg.inv(torch.linalg.cholesky(covariance)).T
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.running_mean.flatten(), mean)  # not updated


def test_shrinkage_and_whitening_matrix():
    covariance = torch.tensor([[4.0, 2.0], [2.0, 3.0]])
    w = whitening_matrix(covariance, eps=0.5)
    shrunk = 0.5 * covariance + 0.5 * torch.eye(2)
    torch.testing.assert_close(w @ shrunk @ w.T, torch.eye(2))
    assert torch.equal(w, torch.tril(w))


@pytest.mark.parametrize(("num_samples", "w_iter"), [(2, 1), (3, 2)])
def test_loss_matches_formula_with_global_generator_permutations(num_samples, w_iter):
    g = torch.Generator().manual_seed(3)
    bs, dim, w_size = 32, 4, 8
    x = torch.randn(num_samples * bs, dim, generator=g)
    torch.manual_seed(7)
    perms = [torch.randperm(bs) for _ in range(w_iter)]
    torch.manual_seed(7)
    loss_fn = WMSELoss(
        embedding_dim=dim, w_size=w_size, w_iter=w_iter, num_samples=num_samples
    )
    value = loss_fn(x)
    assert value.item() == pytest.approx(
        reference(x, num_samples, w_size, perms), rel=1e-5
    )
    # the global generator advanced exactly as w_iter randperm(bs) calls would
    torch.manual_seed(7)
    for _ in range(w_iter):
        torch.randperm(bs)
    expected_next = torch.rand(1)
    torch.manual_seed(7)
    WMSELoss(embedding_dim=dim, w_size=w_size, w_iter=w_iter, num_samples=num_samples)(
        x
    )
    assert torch.equal(torch.rand(1), expected_next)


def test_gradient_flows_and_custom_loss_fn():
    x = torch.randn(2 * 16, 4, requires_grad=True)
    seen = []

    def loss_fn(a, b):
        seen.append(a.shape)
        return norm_mse_loss(a, b)

    WMSELoss(embedding_dim=4, w_size=8, loss_fn=loss_fn)(x).backward()
    assert seen == [(16, 4)] and torch.isfinite(x.grad).all()
    torch.testing.assert_close(norm_mse_loss(x, -x), torch.tensor(4.0))


def test_defaults_integral_arguments_and_errors():
    loss_fn = WMSELoss()
    assert (loss_fn.w_iter, loss_fn.w_size, loss_fn.num_samples) == (1, 256, 2)
    assert loss_fn.whitening.num_features == 128 and loss_fn.whitening.momentum == 0.01
    assert loss_fn.loss_f is norm_mse_loss
    small = WMSELoss(
        embedding_dim=np.int64(4), w_size=np.int32(8), num_samples=np.int64(2)
    )
    assert small.w_size == 8 and type(small.w_size) is int
    with pytest.raises(ValueError, match="w_size"):
        WMSELoss(embedding_dim=128, w_size=200)
    with pytest.raises(ValueError, match="num_samples"):
        WMSELoss(num_samples=1)
    with pytest.raises(TypeError, match="w_iter"):
        WMSELoss(w_iter=1.0)
    with pytest.raises(TypeError, match="loss_fn"):
        WMSELoss(loss_fn="mse")
    with pytest.raises(ValueError, match="num_samples"):
        small(torch.randn(33, 4))
    with pytest.raises(ValueError, match="w_size"):
        small(torch.randn(2 * 12, 4))
    with pytest.raises(ValueError, match="num_features"):
        Whitening2d(3)(torch.randn(8, 4))
