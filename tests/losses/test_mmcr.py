"""MMCRLoss against float64 nuclear norms computed from eigenvalues of Gram matrices."""

import pytest
import torch

from pynsm.losses import MMCRLoss, mmcr_loss


def nuclear(matrix):
    """Sum of singular values = sum of sqrt(eigenvalues of M M^T), in float64."""
    gram = matrix.double() @ matrix.double().T
    return torch.linalg.eigvalsh(gram).clamp(min=0).sqrt().sum().item()


def reference(online, momentum, lmda):
    z = torch.cat([online, momentum], dim=1).double()
    centroids = z.mean(dim=1)
    per_image = sum(nuclear(z[b]) for b in range(z.shape[0])) / z.shape[0]
    return -nuclear(centroids) + lmda * per_image


@pytest.mark.parametrize("lmda", [5e-3, 0.0, 1.0])
@pytest.mark.parametrize("scale", [1.0, 1e-4, 1e4])
def test_matches_formula(lmda, scale):
    g = torch.Generator().manual_seed(3)
    online = torch.randn(10, 3, 6, generator=g) * scale
    momentum = torch.randn(10, 3, 6, generator=g) * scale
    value = MMCRLoss(lmda=lmda)(online, momentum)
    assert value.item() == pytest.approx(reference(online, momentum, lmda), rel=1e-5)


def test_gradient_finite_with_repeated_singular_values():
    z = torch.zeros(4, 2, 4)
    z[:, :, 0] = 1.0  # every centroid the same: singular values (2, 0, 0, 0)
    online = z.clone().requires_grad_()
    mmcr_loss(online, z).backward()
    assert torch.isfinite(online.grad).all()
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, 2, 3, dtype=torch.float64)
    torch.autograd.gradcheck(lambda a: mmcr_loss(a, y), (x,))


def test_spread_centroids_score_lower_than_collapsed_ones():
    spread = torch.eye(4).unsqueeze(1).expand(4, 2, 4)
    collapsed = torch.ones(4, 2, 4) / 2
    assert mmcr_loss(spread, spread) < mmcr_loss(collapsed, collapsed)


def test_defaults_and_errors():
    assert MMCRLoss().lmda == 5e-3
    with pytest.raises(ValueError, match="lmda"):
        MMCRLoss(lmda=-1.0)
    with pytest.raises(TypeError, match="lmda"):
        MMCRLoss(lmda=[0.1])
    with pytest.raises(ValueError, match="online and momentum"):
        MMCRLoss()(torch.randn(4, 2, 3), torch.randn(4, 3, 3))
    with pytest.raises(ValueError, match="online and momentum"):
        MMCRLoss()(torch.randn(4, 3), torch.randn(4, 3))
