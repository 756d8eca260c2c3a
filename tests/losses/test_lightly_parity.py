"""Side by side with lightly itself (skipped unless tests/fetch_lightly.sh has run).

The memory bank is compared with lightly 1.4.26 (the release whose API users
write against), the five newer losses with lightly 1.6.0, within 1e-5 (float32).
"""

import pytest
import torch
from lightly_peer import lightly_module

import pynsm.losses as ours


def _peer(version, name):
    module = lightly_module(version, name)
    if module is None:
        pytest.skip(
            f"lightly {version} not unpacked in .peer/ (tests/fetch_lightly.sh)"
        )
    return module


def _close(a, b, rel=1e-5):
    a, b = float(a.detach()), float(b.detach())
    assert abs(a - b) <= rel * abs(b) + 1e-6, (a, b)


@pytest.mark.parametrize("feature_dim_first", [True, False])
def test_memory_bank_layout_and_contents(feature_dim_first):
    peer = _peer("1.4.26", "models.modules.memory_bank")
    torch.manual_seed(0)
    theirs = peer.MemoryBankModule(size=(8, 3), feature_dim_first=feature_dim_first)
    torch.manual_seed(0)
    mine = ours.MemoryBankModule(size=(8, 3), feature_dim_first=feature_dim_first)
    torch.testing.assert_close(mine.bank, theirs.bank)
    # batches of 2 fill the bank exactly; 3 and 5 overflow it (lightly drops the
    # rest of the batch and restarts at 0); 11 is longer than the bank
    for size in (2, 2, 2, 2, 3, 3, 3, 5, 2, 11, 3):
        batch = torch.randn(size, 3)
        torch.testing.assert_close(
            mine(batch, update=True)[1], theirs(batch, update=True)[1]
        )
        torch.testing.assert_close(mine.bank, theirs.bank)
        assert int(mine.bank_ptr) == int(theirs.bank_ptr)


def test_moco_loss_with_tuple_memory_bank():
    peer = _peer("1.4.26", "loss.ntx_ent_loss")
    torch.manual_seed(1)
    theirs = peer.NTXentLoss(temperature=0.2, memory_bank_size=(16, 8))
    torch.manual_seed(1)
    mine = ours.NTXentLoss(temperature=0.2, memory_bank_size=(16, 8))
    for _ in range(3):
        out0, out1 = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8)
        _close(mine(out0, out1), theirs(out0, out1))


def test_ibot_patch_loss_with_centring():
    peer = _peer("1.6.0", "loss.ibot_loss")
    theirs, mine = peer.IBOTPatchLoss(output_dim=32), ours.IBOTPatchLoss(output_dim=32)
    g = torch.Generator().manual_seed(2)
    mask = torch.rand(4, 5, 5, generator=g) < 0.4
    n = int(mask.sum())
    for step in range(3):
        teacher = torch.randn(n, 32, generator=g) * 3 + step
        student = torch.randn(n, 32, generator=g) * 3
        _close(mine(teacher, student, mask), theirs(teacher, student, mask))
    _close(mine(teacher, student, mask, 0.07), theirs(teacher, student, mask, 0.07))
    torch.testing.assert_close(mine.center, theirs.center.value)


@pytest.mark.parametrize("p", [2, 1])
def test_koleo(p):
    peer = _peer("1.6.0", "loss.koleo_loss")
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(3))
    _close(ours.KoLeoLoss(p=p)(x), peer.KoLeoLoss(p=p)(x))


def test_mmcr():
    peer = _peer("1.6.0", "loss.mmcr_loss")
    g = torch.Generator().manual_seed(4)
    online, momentum = (
        torch.randn(32, 2, 16, generator=g),
        torch.randn(32, 2, 16, generator=g),
    )
    _close(ours.MMCRLoss()(online, momentum), peer.MMCRLoss()(online, momentum))


def test_wmse_same_permutations_and_running_statistics():
    peer = _peer("1.6.0", "loss.wmse_loss")
    x = torch.randn(3 * 64, 8, generator=torch.Generator().manual_seed(5))
    kwargs = {"embedding_dim": 8, "w_size": 16, "w_iter": 2, "num_samples": 3}
    torch.manual_seed(6)
    theirs = peer.WMSELoss(**kwargs)
    value_theirs = theirs(x)
    torch.manual_seed(6)
    mine = ours.WMSELoss(**kwargs)
    _close(mine(x), value_theirs)
    torch.testing.assert_close(mine.state_dict(), theirs.state_dict())


def test_emp_ssl_differs_only_in_the_sign_of_the_coding_rate():
    peer = _peer("1.6.0", "loss.emp_ssl_loss")
    g = torch.Generator().manual_seed(7)
    views = [torch.randn(32, 16, generator=g) for _ in range(4)]
    rate = peer.tcr_loss(torch.stack(views), eps=0.2)
    _close(ours.total_coding_rate(torch.stack(views), 0.2), rate)
    _close(ours.EMPSSLLoss()(views), peer.EMPSSLLoss()(views) - 2 * rate)
