"""RunningWhitening: exact running moments, whitening, warm-up, errors, state."""

import pytest
import torch

from pynsm.arch import RunningWhitening


def _correlated(n: int, generator: torch.Generator) -> torch.Tensor:
    # features of very different scales, strongly correlated, with an offset
    mixing = torch.tensor(
        [
            [3.0, 0.0, 0.0, 0.0],
            [2.0, 0.1, 0.0, 0.0],
            [0.0, 1.0, 0.5, 0.0],
            [1.0, 0.0, 0.0, 0.01],
        ],
        dtype=torch.float64,
    )
    x = torch.randn(n, 4, generator=generator, dtype=torch.float64) @ mixing.T
    return x + torch.tensor([5.0, -1.0, 0.0, 2.0], dtype=torch.float64)


def test_plain_average_equals_the_moments_of_all_batches():
    g = torch.Generator().manual_seed(0)
    batches = [_correlated(n, g) for n in (7, 30, 3, 60)]
    white = RunningWhitening(4, momentum=None).double()
    for batch in batches:
        white(batch)
    # weights 1/t per batch: the average of the batch moments, each batch's
    # covariance plus the spread of the batch means (equal weight per batch)
    means = torch.stack([b.mean(0) for b in batches])
    covs = torch.stack([torch.cov(b.T, correction=0) for b in batches])
    expected_mean = means.mean(0)
    spread = (means - expected_mean).T @ (means - expected_mean) / len(batches)
    torch.testing.assert_close(white.running_mean, expected_mean)
    torch.testing.assert_close(white.running_cov, covs.mean(0) + spread)
    assert int(white.num_batches_tracked) == 4
    assert int(white.num_samples_tracked) == 100


def test_moving_average_weights_recent_batches_by_momentum():
    g = torch.Generator().manual_seed(1)
    first, second = _correlated(50, g), _correlated(50, g) * 2
    white = RunningWhitening(4, momentum=0.25).double()
    white(first)  # weight max(0.25, 1/1) = 1: the first batch's moments
    white(second)  # weight max(0.25, 1/2) = 0.5
    white(first)  # weight max(0.25, 1/3) = 1/3
    mean = first.mean(0)
    mean = mean + 0.5 * (second.mean(0) - mean)
    mean = mean + (first.mean(0) - mean) / 3
    torch.testing.assert_close(white.running_mean, mean)
    white(second)  # weight 0.25 from now on
    torch.testing.assert_close(
        white.running_mean, mean + 0.25 * (second.mean(0) - mean)
    )


def test_output_is_white_and_the_map_is_the_cholesky_inverse():
    g = torch.Generator().manual_seed(2)
    white = RunningWhitening(4, momentum=None, eps=0.0, update_every=20, warmup=0)
    white.double()
    for _ in range(20):
        white(_correlated(500, g))
    white.eval()
    held_out = _correlated(20000, g)
    y = white(held_out)
    cov = torch.cov(y.T)
    # condition number of the input covariance is about 1e5; the output is white
    torch.testing.assert_close(cov, torch.eye(4, dtype=cov.dtype), atol=0.05, rtol=0)
    factor = torch.linalg.cholesky(white.running_cov)
    torch.testing.assert_close(white.whitening @ factor, torch.eye(4).double())


def test_eps_regularises_relative_to_the_mean_variance():
    white = RunningWhitening(2, momentum=None, eps=0.5, warmup=0).double()
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)  # var 1 and 0
    white(x)
    # C = diag(1, 0), mean eigenvalue 0.5: S = diag(1/sqrt(1.25), 1/sqrt(0.25))
    expected = torch.diag(torch.tensor([1.25, 0.25], dtype=torch.float64).rsqrt())
    torch.testing.assert_close(white.whitening, expected)


def test_warmup_scales_then_whitens():
    g = torch.Generator().manual_seed(3)
    white = RunningWhitening(4, momentum=None, eps=0.0, update_every=10, warmup=250)
    white.double()
    white(_correlated(100, g))
    white(_correlated(100, g))  # refreshed every batch while warming up
    # 200 samples < 250: S = I / sqrt(largest eigenvalue), every variance <= 1
    largest = torch.linalg.eigvalsh(white.running_cov)[-1]
    eye = torch.eye(4, dtype=torch.float64)
    torch.testing.assert_close(white.whitening, eye * largest.rsqrt())
    white(_correlated(100, g))  # 300 samples: the first full whitening
    factor = torch.linalg.cholesky(white.running_cov)
    torch.testing.assert_close(white.whitening @ factor, eye)


def test_identity_before_training_and_frozen_in_eval():
    white = RunningWhitening(3)
    x = torch.randn(5, 3)
    white.eval()
    torch.testing.assert_close(white(x), x)
    assert int(white.num_batches_tracked) == 0


def test_refresh_schedule():
    g = torch.Generator().manual_seed(4)
    white = RunningWhitening(4, update_every=3, warmup=0).double()
    white(_correlated(100, g))  # the first batch refreshes
    first = white.whitening.clone()
    white(_correlated(100, g))
    torch.testing.assert_close(white.whitening, first)  # batch 2: kept
    white(_correlated(100, g))  # batch 3: refreshed
    assert not torch.equal(white.whitening, first)
    before = white.whitening.clone()
    white(_correlated(100, g))
    white.refresh()  # on demand
    assert not torch.equal(white.whitening, before)


def test_gradient_flows_to_the_input():
    white = RunningWhitening(3, warmup=0)
    white(torch.randn(50, 3))
    white.eval()
    x = torch.randn(4, 3, requires_grad=True)
    white(x).sum().backward()
    torch.testing.assert_close(x.grad, white.whitening.sum(0).expand(4, 3))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_features": 0}, ValueError, "num_features"),
        ({"num_features": 2.0}, TypeError, "num_features"),
        ({"num_features": 2, "momentum": 0.0}, ValueError, "momentum"),
        ({"num_features": 2, "momentum": 1.5}, ValueError, "momentum"),
        ({"num_features": 2, "eps": -1.0}, ValueError, "eps"),
        ({"num_features": 2, "eps": float("nan")}, ValueError, "eps"),
        ({"num_features": 2, "update_every": 0}, ValueError, "update_every"),
        ({"num_features": 2, "warmup": -1}, ValueError, "warmup"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        RunningWhitening(**kwargs)


def test_bad_inputs_change_nothing():
    white = RunningWhitening(3)
    state = {k: v.clone() for k, v in white.state_dict().items()}
    with pytest.raises(ValueError, match=r"\[B, 3\]"):
        white(torch.randn(4, 2))
    with pytest.raises(ValueError, match="floating"):
        white(torch.ones(4, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="Tensor"):
        white([[1.0, 2.0, 3.0]])
    bad = torch.randn(4, 3)
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        white(bad)
    for key, value in white.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_failed_factorisation_changes_nothing():
    white = RunningWhitening(2, eps=0.0, warmup=0)
    state = {k: v.clone() for k, v in white.state_dict().items()}
    constant = torch.tensor([[1.0, 2.0]]).expand(4, 2)  # no variance at all
    with pytest.raises(RuntimeError, match="positive definite"):
        white(constant)
    for key, value in white.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_state_dict_round_trip_weights_only(tmp_path):
    g = torch.Generator().manual_seed(5)
    white = RunningWhitening(4, warmup=0).double()
    for _ in range(3):
        white(_correlated(100, g))
    path = tmp_path / "white.pt"
    torch.save(white.state_dict(), path)
    other = RunningWhitening(4).double()
    other.load_state_dict(torch.load(path, weights_only=True))
    x = _correlated(10, g)
    white.eval(), other.eval()
    torch.testing.assert_close(other(x), white(x))
