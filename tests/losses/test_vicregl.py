"""VICRegL against a plain re-derivation of the authors' global + local losses."""

import pytest
import torch

from pynsm.losses import VICRegLLoss


def vicreg_matched(x, y, lam, mu, nu, eps):
    """VICReg of [B, K, D] matched features: statistics over B per position k."""
    b, k_count, d = x.shape
    invariance = ((x - y) ** 2).mean()

    def variance(z):
        return torch.stack(
            [
                torch.relu(1 - torch.sqrt(z[:, k, j].var() + eps))
                for k in range(k_count)
                for j in range(d)
            ]
        ).mean()

    def covariance(z):
        per_position = []
        for k in range(k_count):
            zc = z[:, k] - z[:, k].mean(0)
            cov = zc.T @ zc / (b - 1)
            off = sum(cov[i, j] ** 2 for i in range(d) for j in range(d) if i != j)
            per_position.append(off / d)
        return torch.stack(per_position).mean()

    return (
        lam * invariance
        + mu * 0.5 * (variance(x) + variance(y))
        + nu * (covariance(x) + covariance(y))
    )


def match(inputs, candidates, dist_inputs, dist_candidates, num_matches):
    """For each sample: nearest candidate of every input position, keep the
    num_matches closest pairs in increasing distance."""
    kept_inputs, kept_matches = [], []
    for s in range(inputs.shape[0]):
        pairs = []
        for p in range(inputs.shape[1]):
            d = [
                torch.dist(dist_inputs[s, p], dist_candidates[s, q]).item()
                for q in range(candidates.shape[1])
            ]
            q = min(range(len(d)), key=d.__getitem__)
            pairs.append((d[q], p, q))
        pairs.sort()
        chosen = pairs[:num_matches]
        kept_inputs.append(torch.stack([inputs[s, p] for _, p, _ in chosen]))
        kept_matches.append(torch.stack([candidates[s, q] for _, _, q in chosen]))
    return torch.stack(kept_inputs), torch.stack(kept_matches)


def vicregl_reference(views, grids, n_global, lam, mu, nu, alpha, eps, num_matches):
    pairs = [(a, b) for a in range(n_global) for b in range(len(views)) if b != a]
    g = [v[0] for v in views]
    invariance = sum(((g[a] - g[b]) ** 2).mean() for a, b in pairs) / len(pairs)

    def var(z):
        return torch.relu(1 - torch.sqrt(z.var(0) + eps)).mean()

    def cov(z):
        zc = z - z.mean(0)
        c = zc.T @ zc / (z.shape[0] - 1)
        return (c**2).sum().sub((c.diagonal() ** 2).sum()) / z.shape[1]

    global_loss = (
        lam * invariance
        + mu * sum(var(z) for z in g) / len(g)
        + nu * sum(cov(z) for z in g) / len(g)
    )
    local = 0.0
    for a, b in pairs:
        za, zb = views[a][1].flatten(1, 2), views[b][1].flatten(1, 2)
        ga, gb = grids[a].flatten(1, 2), grids[b].flatten(1, 2)
        for da, db in ((za, zb), (ga, gb)):  # feature-space then location matching
            x1, y1 = match(za, zb, da, db, num_matches[0])
            x2, y2 = match(zb, za, db, da, num_matches[1])
            local = local + 0.5 * (
                vicreg_matched(x1, y1, lam, mu, nu / 2, eps)
                + vicreg_matched(x2, y2, lam, mu, nu / 2, eps)
            )
    local = local / len(pairs)
    return alpha * global_loss + (1 - alpha) * local


def _views(shapes, batch=5, dim_g=4, dim_l=3):
    views, grids = [], []
    for h, w in shapes:
        views.append(
            (
                torch.randn(batch, dim_g, dtype=torch.float64, requires_grad=True),
                torch.randn(
                    batch, h, w, dim_l, dtype=torch.float64, requires_grad=True
                ),
            )
        )
        grids.append(torch.rand(batch, h, w, 2, dtype=torch.float64))
    return views, grids


def test_matches_reference_with_local_views():
    views, grids = _views([(3, 3), (3, 3), (2, 2)])
    params = dict(lambda_param=2.0, mu_param=3.0, nu_param=4.0, alpha=0.6, eps=1e-3)
    loss_fn = VICRegLLoss(**params, num_matches=(4, 3))
    value = loss_fn(views[:2], grids[:2], views[2:], grids[2:])
    ref = vicregl_reference(
        views, grids, 2, 2.0, 3.0, 4.0, 0.6, 1e-3, num_matches=(4, 3)
    )
    leaves = [t for v in views for t in v]
    grads = torch.autograd.grad(value, leaves)
    ref_grads = torch.autograd.grad(ref, leaves)
    torch.testing.assert_close(value, ref, rtol=1e-12, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_global_views_only_and_defaults():
    loss_fn = VICRegLLoss()
    assert (loss_fn.lambda_param, loss_fn.mu_param, loss_fn.nu_param) == (25, 25, 1)
    assert loss_fn.alpha == 0.75 and loss_fn.eps == 0.0001
    assert loss_fn.num_matches == (20, 4) and loss_fn.gather_distributed is False
    views, grids = _views([(3, 3), (3, 3)])
    value = loss_fn(views, grids)
    ref = vicregl_reference(views, grids, 2, 25.0, 25.0, 1.0, 0.75, 1e-4, (20, 4))
    torch.testing.assert_close(value, ref, rtol=1e-12, atol=1e-12)


def test_alpha_one_is_global_vicreg():
    views, grids = _views([(2, 2), (2, 2)])
    value = VICRegLLoss(alpha=1.0)(views, grids)
    (g0, _), (g1, _) = views
    from pynsm.losses import vicreg_loss

    # global part: the pair (0, 1) and (1, 0) have the same invariance; variance and
    # covariance are averaged over views (VICReg sums covariances, so nu / 2 here)
    expected = vicreg_loss(g0, g1, 25.0, 25.0, 0.5)
    torch.testing.assert_close(value, expected)


def test_finite_in_bf16():
    views, grids = _views([(3, 3), (3, 3)])
    views = [(g.detach().float(), loc.detach().float()) for g, loc in views]
    grids = [g.float() for g in grids]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(VICRegLLoss(num_matches=(4, 2))(views, grids))


def test_errors(monkeypatch):
    views, grids = _views([(2, 2), (2, 2)])
    loss_fn = VICRegLLoss()
    with pytest.raises(ValueError, match="global_view_grids"):
        loss_fn(views, grids[:1])
    with pytest.raises(ValueError, match="local_view_grids"):
        loss_fn(views, grids, local_view_features=views)
    with pytest.raises(ValueError, match="local_view_grids"):
        loss_fn(views, grids, views, grids[:1])
    with pytest.raises(ValueError, match="grid"):
        loss_fn(views, [g[:, :1] for g in grids])
    with pytest.raises(ValueError, match="alpha"):
        VICRegLLoss(alpha=1.5)
    with pytest.raises(ValueError, match="num_matches"):
        VICRegLLoss(num_matches=(0, 4))
    with pytest.raises(ValueError, match="eps"):
        VICRegLLoss(eps=-1)
    monkeypatch.setattr(torch.distributed, "is_available", lambda: False)
    with pytest.raises(ValueError, match="gather_distributed"):
        VICRegLLoss(gather_distributed=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_give_the_float32_loss(dtype):
    # unnormalised features of scale ~100: the fp16 covariances overflow
    views, grids = _views([(3, 3), (3, 3), (2, 2)], batch=16, dim_g=8, dim_l=6)
    half = [
        tuple((t.detach() * 100).to(dtype).requires_grad_() for t in view)
        for view in views
    ]
    single = [tuple(t.detach().float().requires_grad_() for t in v) for v in half]
    grids_half = [g.to(dtype) for g in grids]
    grids_single = [g.float() for g in grids_half]
    loss_fn = VICRegLLoss(num_matches=(4, 2))
    value = loss_fn(half[:2], grids_half[:2], half[2:], grids_half[2:])
    ref = loss_fn(single[:2], grids_single[:2], single[2:], grids_single[2:])
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, ref, rtol=1e-6, atol=0)
    value.backward()
    ref.backward()
    for view, ref_view in zip(half, single):
        for t, r in zip(view, ref_view):
            assert t.grad.dtype == dtype
            torch.testing.assert_close(t.grad, r.grad.to(dtype))
    with torch.autocast("cpu", dtype=dtype):
        in_autocast = loss_fn(
            single[:2], grids_single[:2], single[2:], grids_single[2:]
        )
    torch.testing.assert_close(in_autocast, ref, rtol=1e-6, atol=0)
