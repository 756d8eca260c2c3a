"""KoLeoLoss against a float64 transcription of the Kozachenko-Leonenko estimator."""

import math

import pytest
import torch

from pynsm.losses import KoLeoLoss, koleo_loss


def reference(x, p=2.0, eps=1e-8):
    """-1/B sum_i log(min_{j != i} ||u_i - u_j + eps||_p + eps), u = unit rows."""
    rows = [[float(v) for v in r] for r in x.double()]
    units = []
    for r in rows:
        norm = max(math.sqrt(sum(v * v for v in r)), eps)
        units.append([v / norm for v in r])
    total = 0.0
    for i, u in enumerate(units):
        nearest = max(
            (j for j in range(len(units)) if j != i),
            key=lambda j: sum(a * b for a, b in zip(u, units[j])),
        )
        diff = [a - b + eps for a, b in zip(u, units[nearest])]
        distance = sum(abs(d) ** p for d in diff) ** (1 / p)
        total += math.log(distance + eps)
    return -total / len(units)


@pytest.mark.parametrize("p", [2.0, 1.0, 3.0])
def test_matches_formula(p):
    x = torch.randn(24, 7, generator=torch.Generator().manual_seed(1))
    assert KoLeoLoss(p=p)(x).item() == pytest.approx(reference(x, p), rel=1e-5)


def test_scale_invariant_and_finite_for_huge_tiny_and_duplicated_rows():
    x = torch.randn(16, 5, generator=torch.Generator().manual_seed(2))
    base = koleo_loss(x)
    for scale in (1e-30, 1e-6, 1e6, 1e30):
        torch.testing.assert_close(koleo_loss(x * scale), base, rtol=1e-5, atol=1e-6)
    duplicated = torch.cat([x[:8], x[:8]]).requires_grad_()
    loss = koleo_loss(duplicated)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(duplicated.grad).all()
    assert loss.item() == pytest.approx(reference(duplicated.detach()), rel=1e-4)


def test_spreading_lowers_the_loss_and_gradient_matches_float64():
    x = torch.randn(12, 3, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda t: koleo_loss(t), (x,))
    spread = torch.eye(6)
    clustered = spread + 0.05 * torch.randn(6, 6)
    clustered[3:] = clustered[:3] + 1e-3
    assert koleo_loss(spread) < koleo_loss(clustered)


def test_defaults_and_errors():
    loss_fn = KoLeoLoss()
    assert (loss_fn.p, loss_fn.eps) == (2, 1e-8)
    with pytest.raises(ValueError, match="p must"):
        KoLeoLoss(p=0)
    with pytest.raises(ValueError, match="eps"):
        KoLeoLoss(eps=-1e-3)
    with pytest.raises(TypeError, match="p must"):
        KoLeoLoss(p=None)
    with pytest.raises(ValueError, match="batch >= 2"):
        loss_fn(torch.randn(1, 4))
    with pytest.raises(ValueError, match="batch >= 2"):
        loss_fn(torch.randn(4))
