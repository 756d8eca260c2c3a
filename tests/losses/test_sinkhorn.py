"""Sinkhorn-Knopp (MSN and SwaV flavours) against a float64 transcription of the paper
algorithm, its fixed point, and extreme scales where the naive algorithm breaks."""

import pytest
import torch

from pynsm.losses import sinkhorn_log, sinkhorn_msn, sinkhorn_swav


def reference_sinkhorn(weights, iterations):
    """Sinkhorn-Knopp as written in the SwaV/MSN papers, float64, linear space."""
    q = weights.double().T.clone()  # [K, B]
    k, b = q.shape
    q = q / q.sum()
    if iterations == 0:
        return (q * b).T
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).T


@pytest.mark.parametrize("iterations", [0, 1, 3, 10])
def test_swav_flavour_equals_paper_algorithm(iterations):
    scores = torch.randn(12, 7)
    expected = reference_sinkhorn(torch.exp(scores.double() / 0.05), iterations)
    codes = sinkhorn_swav(scores, iterations=iterations, epsilon=0.05)
    assert codes.dtype == torch.float32
    torch.testing.assert_close(codes.double(), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("iterations", [1, 3, 10])
def test_msn_flavour_equals_paper_algorithm(iterations):
    probs = torch.softmax(torch.randn(9, 5) * 3, dim=1)
    expected = reference_sinkhorn(probs.double(), iterations)
    torch.testing.assert_close(
        sinkhorn_msn(probs, iterations=iterations).double(),
        expected,
        rtol=1e-5,
        atol=1e-7,
    )


def test_msn_flavour_zero_iterations_returns_input():
    probs = torch.softmax(torch.randn(4, 3), dim=1)
    assert sinkhorn_msn(probs, iterations=0) is probs


def test_fixed_point_is_balanced():
    b, k = 16, 4
    codes = sinkhorn_log(torch.randn(b, k, dtype=torch.float64) * 2, 500).exp()
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(b, dtype=torch.float64))
    torch.testing.assert_close(
        codes.sum(dim=0), torch.full((k,), b / k, dtype=torch.float64)
    )
    # more iterations do not move a fixed point
    again = sinkhorn_log(codes.log(), 1).exp()
    torch.testing.assert_close(again, codes)


def reference_log_sinkhorn(log_q, iterations):
    """Independent float64 log-space transcription (no distributed branch)."""
    log_q = log_q.double() - torch.logsumexp(log_q.double().flatten(), 0)
    for _ in range(iterations):
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True)
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True)
    return log_q.exp()


@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_extreme_epsilon_float32_is_finite_and_float64_accurate(scale):
    # unnormalised scores x10 with epsilon=0.01: exp(score / epsilon) ~ exp(3000)
    scores = torch.randn(64, 32) * 3 * scale
    naive = torch.exp(scores / 0.01)
    assert not torch.isfinite(naive).all()  # what the plain algorithm would face
    codes = sinkhorn_swav(scores, iterations=3, epsilon=0.01)
    assert torch.isfinite(codes).all()
    expected = reference_log_sinkhorn(scores.double() / 0.01, 3)
    torch.testing.assert_close(codes.double(), expected, rtol=1e-4, atol=1e-6)


def test_underflowing_msn_probabilities_stay_finite():
    probs = torch.softmax(torch.randn(8, 6) / 0.01, dim=1)
    probs[:, 2] = 0.0  # a prototype nobody uses: 0 / 0 in the linear algorithm
    codes = sinkhorn_msn(probs, iterations=3)
    assert torch.isfinite(codes).all()
    assert (codes[:, 2] == 0).all()
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(8))


def test_bfloat16_input_is_computed_in_float32():
    scores = (torch.randn(16, 8) * 10).bfloat16()
    codes = sinkhorn_swav(scores, epsilon=0.01)
    assert codes.dtype == torch.float32
    assert torch.isfinite(codes).all()


def test_no_gradient_flows():
    scores = torch.randn(4, 3, requires_grad=True)
    assert not sinkhorn_swav(scores).requires_grad


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: sinkhorn_swav(torch.randn(3, 2), iterations=-1), "iterations"),
        (lambda: sinkhorn_msn(torch.rand(3, 2), iterations=-2), "iterations"),
        (lambda: sinkhorn_swav(torch.randn(3, 2), epsilon=0.0), "epsilon"),
        (lambda: sinkhorn_log(torch.randn(3), 1), "log_scores"),
    ],
)
def test_errors_name_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("iterations", [0, 1, 3])
def test_linear_and_log_space_paths_agree(dtype, iterations):
    from pynsm.losses.sinkhorn import _sinkhorn, _sinkhorn_log_space

    # scores spread over 40 nats: the linear path is taken; it must give the
    # log-space result up to rounding, in either output form
    scores = torch.rand(32, 16, generator=torch.Generator().manual_seed(0), dtype=dtype)
    log_scores = 40 * scores - 7
    expected = _sinkhorn_log_space(log_scores, iterations, False)
    linear = _sinkhorn(log_scores, iterations, False, log=False)
    torch.testing.assert_close(linear.log(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        _sinkhorn(log_scores, iterations, False, log=True),
        expected,
        rtol=1e-5,
        atol=1e-5,
    )
    # beyond the safe spread (or with -inf entries) the log-space path runs
    wide = log_scores * 100
    torch.testing.assert_close(
        _sinkhorn(wide, iterations, False, log=True),
        _sinkhorn_log_space(wide, iterations, False),
    )
    log_scores[0, 0] = -torch.inf
    codes = _sinkhorn(log_scores, iterations, False, log=False)
    assert codes[0, 0] == 0 and torch.isfinite(codes).all()
