"""TiCo: invariance + running-covariance contrast (Zhu et al. 2022)."""

import contextlib
import warnings

import pytest
import torch

from pynsm.losses import TiCoLoss


def tico_reference(z_a, z_b, previous_c, beta, rho):
    n = z_a.shape[0]
    x = z_a / z_a.norm(dim=1, keepdim=True)
    y = z_b / z_b.norm(dim=1, keepdim=True)
    batch_c = sum(torch.outer(x[i], x[i]) for i in range(n)) / n
    c = beta * previous_c + (1 - beta) * batch_c
    invariance = 1 - sum(x[i] @ y[i] for i in range(n)) / n
    contrast = sum(x[i] @ c @ x[i] for i in range(n)) / n
    return invariance + rho * contrast, c.detach()


def test_matches_formula_over_steps():
    loss_fn = TiCoLoss(beta=0.8, rho=5.0)
    c = torch.zeros(4, 4, dtype=torch.float64)
    for _ in range(3):
        z_a = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
        z_b = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
        value = loss_fn(z_a, z_b)
        ref, c = tico_reference(z_a, z_b, c, 0.8, 5.0)
        torch.testing.assert_close(value, ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(loss_fn.C, c)
        for g, r in zip(
            torch.autograd.grad(value, (z_a, z_b)), torch.autograd.grad(ref, (z_a, z_b))
        ):
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_update_covariance_matrix_false_keeps_state():
    loss_fn = TiCoLoss()
    assert (loss_fn.beta, loss_fn.rho, loss_fn.gather_distributed) == (0.9, 20.0, False)
    loss_fn(torch.randn(5, 3), torch.randn(5, 3))
    c = loss_fn.C.clone()
    loss_fn(torch.randn(5, 3), torch.randn(5, 3), update_covariance_matrix=False)
    torch.testing.assert_close(loss_fn.C, c)
    assert not loss_fn.C.requires_grad


def test_errors(monkeypatch):
    with pytest.raises(ValueError, match="beta"):
        TiCoLoss(beta=1.5)
    with pytest.raises(ValueError, match="z_a and z_b"):
        TiCoLoss()(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="batch size"):
        TiCoLoss()(torch.randn(1, 3), torch.randn(1, 3))
    monkeypatch.setattr(torch.distributed, "is_available", lambda: False)
    with pytest.raises(ValueError, match="gather_distributed"):
        TiCoLoss(gather_distributed=True)


def test_covariance_is_in_state_dict_and_a_resumed_run_is_exact():
    torch.manual_seed(0)
    batches = [(torch.randn(6, 4), torch.randn(6, 4)) for _ in range(3)]
    source = TiCoLoss(beta=0.8)
    for z_a, z_b in batches[:2]:
        source(z_a, z_b)
    state = source.state_dict()
    assert set(state) == {"C"} and state["C"].shape == (4, 4)
    resumed = TiCoLoss(beta=0.8)  # C not yet allocated: adopts the saved shape
    resumed.load_state_dict(state)
    torch.testing.assert_close(resumed.C, source.C, rtol=0, atol=0)
    assert torch.equal(resumed(*batches[2]), source(*batches[2]))
    assert torch.equal(resumed.C, source.C)
    # the reverse, and state_dicts saved without C (before, or by lightly)
    resumed.load_state_dict(TiCoLoss().state_dict())
    assert resumed.C.numel() == 0
    kept = source.C.clone()
    source.load_state_dict({})
    assert torch.equal(source.C, kept)
    with pytest.raises(RuntimeError, match="covariance"):
        TiCoLoss().load_state_dict({"C": torch.zeros(3)})


@contextlib.contextmanager
def _skipped(on_host):
    """A warning on the host path; none on the device path (no sync to read)."""
    if on_host:
        with pytest.warns(RuntimeWarning, match="TiCoLoss covariance"):
            yield
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            yield


@pytest.mark.parametrize("on_host", [True, False])
def test_non_finite_batch_is_not_folded_into_the_covariance(on_host, monkeypatch):
    from pynsm.losses import _numerics

    if not on_host:  # the accelerator path (torch.where, no warning), on the CPU
        monkeypatch.setattr(_numerics, "_read_on_host", lambda tensor: False)
    z_a = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    z_b = torch.randn(6, 4, dtype=torch.float64)
    bad = z_a.detach().clone()
    bad[1, 1] = float("nan")
    fresh = TiCoLoss(beta=0.8)
    with _skipped(on_host):
        fresh(bad, z_b)  # first call: C stays zero, the value it starts from
    torch.testing.assert_close(fresh.C, torch.zeros(4, 4, dtype=torch.float64))
    loss_fn = TiCoLoss(beta=0.8)
    loss_fn(z_a, z_b).backward()
    kept = loss_fn.C.clone()
    with _skipped(on_host):
        assert not torch.isfinite(loss_fn(bad, z_b))
    assert torch.equal(loss_fn.C, kept)
    value = loss_fn(z_a, z_b)
    value.backward()  # C replaced, not modified in place under the graph
    torch.testing.assert_close(value, tico_reference(z_a, z_b, kept, 0.8, 20.0)[0])


def _distributed_non_finite_batch(rank, world_size):
    torch.manual_seed(0)  # the same batches on both ranks, a nan on rank 1 only
    z_a, z_b, bad = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
    if rank == 1:
        bad[0, 0] = float("nan")
    loss_fn = TiCoLoss(gather_distributed=True)
    loss_fn(z_a, z_b)
    kept = loss_fn.C.clone()
    with pytest.warns(RuntimeWarning, match="TiCoLoss covariance"):
        loss_fn(bad, z_b)  # gathered: both ranks see the nan and skip
    return kept, loss_fn.C


def test_gathered_non_finite_batch_is_skipped_by_every_process():
    from dist_utils import run_distributed

    (kept0, c0), (kept1, c1) = run_distributed(_distributed_non_finite_batch, 2)
    assert torch.equal(c0, kept0) and torch.equal(c1, kept1)
    assert torch.equal(c0, c1)
