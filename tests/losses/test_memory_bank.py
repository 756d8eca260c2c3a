"""MemoryBankModule: lightly's constructor and layout, FIFO ring update, state_dict."""

import numpy as np
import pytest
import torch
from dist_utils import run_distributed

from pynsm.losses import CO2Regularizer, MemoryBankModule, NTXentLoss, ntxent_loss


def test_size_zero_disables_the_bank():
    output = torch.randn(3, 4)
    for size in (0, (0, 4), (0,)):
        out, bank = MemoryBankModule(size=size)(output, update=True)
        assert out is output and bank is None


def test_defaults():
    memory = MemoryBankModule()
    assert memory.size == (65536,)
    assert memory.gather_distributed is False and memory.feature_dim_first is True
    assert memory.bank.numel() == 0  # int size: allocated at the first call


def test_tuple_size_allocates_unit_rows_at_construction():
    memory = MemoryBankModule(size=(10, 4))
    assert memory.bank.shape == (10, 4) and memory.bank.dtype == torch.float32
    torch.testing.assert_close(memory.bank.norm(dim=1), torch.ones(10))
    assert torch.linalg.matrix_rank(memory.bank) == 4  # not a constant fill
    assert int(memory.bank_ptr) == 0
    _, bank = memory(torch.randn(3, 4))
    torch.testing.assert_close(bank, memory.bank.T)  # feature_dim_first


def test_int_size_allocates_at_first_call_from_the_batch_shape():
    memory = MemoryBankModule(size=10)
    _, bank = memory(torch.randn(3, 4))
    assert memory.bank.shape == (10, 4) and bank.shape == (4, 10)
    torch.testing.assert_close(bank.norm(dim=0), torch.ones(10))


def test_int_and_tuple_sizes_draw_the_same_initial_bank():
    torch.manual_seed(5)
    eager = MemoryBankModule(size=(6, 3))
    lazy, batch = MemoryBankModule(size=6), torch.randn(2, 3)
    torch.manual_seed(5)
    lazy(batch)
    torch.testing.assert_close(lazy.bank, eager.bank)


def test_feature_dim_first_false_returns_the_stored_layout():
    memory = MemoryBankModule(size=(5, 3), feature_dim_first=False)
    _, bank = memory(torch.randn(2, 3))
    torch.testing.assert_close(bank, memory.bank)
    assert bank.shape == (5, 3)


def test_multi_dimensional_entries():
    memory = MemoryBankModule(size=(5, 2, 3))
    assert memory.bank.shape == (5, 2, 3)
    batch = torch.randn(4, 2, 3)
    _, bank = memory(batch, update=True)
    assert bank.shape == (3, 2, 5)  # transpose(0, -1), as lightly
    torch.testing.assert_close(memory.bank[:4], batch)
    lazy = MemoryBankModule(size=5, feature_dim_first=False)
    assert lazy(batch)[1].shape == (5, 2, 3)


def _lightly_rule(bank, ptr, batch):
    """lightly's update on plain lists: fill to the end, drop the rest, restart."""
    if ptr + len(batch) >= len(bank):
        bank[ptr:] = batch[: len(bank) - ptr]
        return 0
    bank[ptr : ptr + len(batch)] = batch
    return ptr + len(batch)


@pytest.mark.parametrize("batch_sizes", [[2, 2, 2, 2], [3, 3, 3], [4, 1, 7, 2, 5]])
def test_update_fills_to_the_end_drops_the_rest_and_restarts(batch_sizes):
    memory = MemoryBankModule(size=(5, 3)).double()
    model, ptr = list(memory.bank.clone()), 0
    for size in batch_sizes:
        batch = torch.randn(size, 3, dtype=torch.float64)
        before = memory.bank.clone()
        _, returned = memory(batch, update=True)
        torch.testing.assert_close(returned, before.T)
        ptr = _lightly_rule(model, ptr, list(batch))
        torch.testing.assert_close(memory.bank, torch.stack(model))
        assert int(memory.bank_ptr) == ptr


def test_overflow_matches_lightly_forward_test():
    # lightly's TestMemoryBank.test_forward: two batches of 3 through a bank of 5
    torch.manual_seed(0)
    memory = MemoryBankModule(size=(5, 2), feature_dim_first=False)
    x0, x1, x2 = torch.randn(3, 2), torch.randn(3, 2), torch.randn(3, 2)
    out0, bank0 = memory(x0, update=True)
    assert out0.tolist() == x0.tolist() and bank0.shape == (5, 2)
    assert bank0[:3].tolist() != x0.tolist()
    assert memory.bank[:3].tolist() == x0.tolist()
    out1, bank1 = memory(x1, update=True)
    assert out1.tolist() == x1.tolist()
    assert bank1[:3].tolist() == x0.tolist()
    assert bank1[3:].tolist() != x1[:2].tolist()
    # slots 3-4 take x1's first two rows, x1[2] is dropped, the pointer restarts
    assert memory.bank.tolist() == torch.cat([x0, x1[:2]]).tolist()
    assert int(memory.bank_ptr) == 0
    out2, bank2 = memory(x2, update=True)
    assert out2.tolist() == x2.tolist()
    assert bank2.tolist() == torch.cat([x0, x1[:2]]).tolist()
    assert memory.bank.tolist() == torch.cat([x2, x1[:2]]).tolist()
    assert int(memory.bank_ptr) == 3


def test_lazy_size_and_dim_first_as_lightly_tests():
    # lightly's test_forward__no_dim and test_forward__dim_first
    memory = MemoryBankModule(size=5, feature_dim_first=False)
    x0 = torch.randn(3, 2)
    _, bank0 = memory(x0, update=True)
    assert bank0.shape == (5, 2) and memory.bank.shape == (5, 2)
    assert memory.bank[:3].tolist() == x0.tolist()
    memory = MemoryBankModule(size=(5, 2), feature_dim_first=True)
    memory(x0, update=True)
    _, bank1 = memory(torch.randn(3, 2), update=True)
    assert bank1.shape == (2, 5) and bank1[:, :3].tolist() == x0.T.tolist()


@pytest.mark.parametrize("size", [9, 10])
def test_each_batch_is_stored_where_lightly_stores_it(size):
    # lightly's TestNTXentLoss.test_forward_easy (size 9) and, with a bank that
    # the batch size does not divide, the slots that the dropping rule gives
    memory, ptr = MemoryBankModule(size=size), 0
    for _ in range(33):
        batch = torch.randn(3, 2)
        _, current = memory(batch, update=True)
        stored = min(3, size - ptr)
        assert (batch[:stored].T - current[:, ptr : ptr + stored]).norm() > 1e-5
        torch.testing.assert_close(memory.bank[ptr : ptr + stored], batch[:stored])
        ptr = 0 if ptr + 3 >= size else ptr + 3
        assert int(memory.bank_ptr) == ptr


def test_batch_larger_than_bank_keeps_its_first_rows():
    memory = MemoryBankModule(size=3).double()
    batch = torch.randn(7, 2, dtype=torch.float64)
    memory(batch, update=True)
    torch.testing.assert_close(memory.bank, batch[:3])
    assert int(memory.bank_ptr) == 0
    memory(batch[:2], update=True)
    memory(batch, update=True)  # from slot 2: one row fits, the rest is dropped
    torch.testing.assert_close(memory.bank, torch.cat([batch[:2], batch[:1]]))


def test_non_finite_batch_is_not_stored():
    memory = MemoryBankModule(size=(5, 3))
    memory(torch.randn(2, 3), update=True)
    before, ptr = memory.bank.clone(), int(memory.bank_ptr)
    for bad in (float("nan"), float("inf")):
        batch = torch.randn(2, 3)
        batch[1, 2] = bad
        with pytest.warns(RuntimeWarning, match="non-finite"):
            memory(batch, update=True)
        assert torch.equal(memory.bank, before) and int(memory.bank_ptr) == ptr
    good = torch.randn(2, 3)
    memory(good, update=True)
    torch.testing.assert_close(memory.bank[2:4], good)


def test_returned_bank_is_detached_copy_and_no_update_by_default():
    memory = MemoryBankModule(size=4)
    output = torch.randn(2, 3, requires_grad=True)
    out, bank = memory(output)
    before = memory.bank.clone()
    memory(output)
    torch.testing.assert_close(memory.bank, before)
    assert out is output and not bank.requires_grad
    bank.zero_()
    torch.testing.assert_close(memory.bank, before)
    memory(output, update=True)
    assert not memory.bank.requires_grad


def test_labels_are_accepted_and_ignored():
    memory = MemoryBankModule(size=(4, 3))
    output = torch.randn(2, 3)
    _, with_labels = memory(output, labels=torch.tensor([1, 0]))
    _, without = memory(output)
    torch.testing.assert_close(with_labels, without)


def test_half_precision_batch_keeps_float32_storage():
    memory = MemoryBankModule(size=4)
    memory(torch.randn(2, 3, dtype=torch.bfloat16), update=True)
    assert memory.bank.dtype == torch.float32


@pytest.mark.parametrize(
    "size", [np.int64(8), (np.int64(8), np.int32(3)), torch.tensor(8), [8, 3]]
)
def test_integral_sizes_of_any_kind(size):
    memory = MemoryBankModule(size=size)
    assert memory.size[0] == 8 and all(type(s) is int for s in memory.size)


@pytest.mark.parametrize(
    ("size", "error"),
    [
        (-1, ValueError),
        ((4, -1), ValueError),
        ((4, 0), ValueError),
        ((), ValueError),
        (2.5, TypeError),
        (True, TypeError),
        ((4, 2.0), TypeError),
        ("64", TypeError),
    ],
)
def test_invalid_size_raises(size, error):
    with pytest.raises(error, match="size"):
        MemoryBankModule(size=size)


def test_invalid_flags_raise():
    with pytest.raises(TypeError, match="gather_distributed"):
        MemoryBankModule(gather_distributed="yes")
    with pytest.raises(TypeError, match="feature_dim_first"):
        MemoryBankModule(feature_dim_first=1)


def test_wrong_output_shape_raises():
    memory = MemoryBankModule(size=4)
    with pytest.raises(ValueError, match="output"):
        memory(torch.randn(4))
    memory(torch.randn(2, 3))
    with pytest.raises(ValueError, match="dimension"):
        memory(torch.randn(2, 5))
    with pytest.raises(ValueError, match="dimension"):
        MemoryBankModule(size=(4, 3))(torch.randn(2, 5))


def test_state_dict_resumes_exactly():
    source = MemoryBankModule(size=7)
    for _ in range(4):  # 3 + 3 + 1 (2 dropped), then 3: mid-bank
        source(torch.randn(3, 4), update=True)
    state = source.state_dict()
    assert set(state) == {"bank", "bank_ptr"}
    resumed = MemoryBankModule(size=7)  # not yet allocated: adopts the saved shape
    resumed.load_state_dict(state)
    torch.testing.assert_close(resumed.bank, source.bank)
    assert int(resumed.bank_ptr) == int(source.bank_ptr) == 3
    batch = torch.randn(3, 4)
    torch.testing.assert_close(
        resumed(batch, update=True)[1], source(batch, update=True)[1]
    )
    torch.testing.assert_close(resumed.bank, source.bank)
    # an allocated bank can take a saved one that was never allocated, too
    fresh = MemoryBankModule(size=7).state_dict()
    resumed.load_state_dict(fresh)
    assert resumed.bank.numel() == 0


def test_state_dict_without_bank_loads_and_keeps_the_bank():
    memory = MemoryBankModule(size=(4, 3))
    before = memory.bank.clone()
    memory.load_state_dict({})  # as saved by lightly or pynsm 1.0.1
    torch.testing.assert_close(memory.bank, before)


def test_state_dict_of_another_size_is_refused():
    state = MemoryBankModule(size=(4, 3)).state_dict()
    with pytest.raises(RuntimeError, match="does not fit"):
        MemoryBankModule(size=5).load_state_dict(state)
    with pytest.raises(RuntimeError, match="does not fit"):
        MemoryBankModule(size=(4, 2)).load_state_dict(state)


def test_losses_take_lightly_style_sizes_and_carry_the_bank():
    out0 = torch.randn(4, 8, requires_grad=True)
    out1 = torch.randn(4, 8)
    moco = NTXentLoss(temperature=0.3, memory_bank_size=(16, 8))
    negatives = moco.bank.T.clone()
    value = moco(out0, out1)
    torch.testing.assert_close(
        value, ntxent_loss(out0, out1, temperature=0.3, negatives=negatives)
    )
    torch.testing.assert_close(
        moco.bank[:4], torch.nn.functional.normalize(out1, dim=1)
    )
    assert set(moco.state_dict()) == {"bank", "bank_ptr"}
    co2 = CO2Regularizer(memory_bank_size=(np.int64(16), 8))
    assert co2.bank.shape == (16, 8)
    assert torch.isfinite(co2(out0, out1))


def _gathered_bank(rank, world_size):
    memory = MemoryBankModule(size=(6, 2), gather_distributed=True)
    local = MemoryBankModule(size=(6, 2))
    batch = torch.full((2, 2), float(rank + 1))
    memory(batch, update=True)
    local(batch, update=True)
    moco = NTXentLoss(memory_bank_size=(6, 2), gather_distributed=True)
    moco(torch.randn(2, 2, requires_grad=True), batch)
    return memory.bank[:4], int(memory.bank_ptr), local.bank[:2], moco.bank[:4]


def test_gather_distributed_adds_the_batches_of_all_processes():
    results = run_distributed(_gathered_bank, 2)
    expected = torch.tensor([[1.0, 1.0]] * 2 + [[2.0, 2.0]] * 2)
    normalised = torch.nn.functional.normalize(expected, dim=1)
    for rank, (gathered, ptr, local, moco) in enumerate(results):
        torch.testing.assert_close(gathered, expected)  # rank order
        assert ptr == 4
        torch.testing.assert_close(local, torch.full((2, 2), float(rank + 1)))
        torch.testing.assert_close(moco, normalised)


def _gathered_non_finite_batch(rank, world_size):
    memory = MemoryBankModule(size=(6, 2), gather_distributed=True)
    memory(torch.full((1, 2), float(rank + 1)), update=True)
    bad = torch.full((1, 2), float("inf") if rank == 0 else 3.0)
    with pytest.warns(RuntimeWarning, match="memory bank"):
        memory(bad, update=True)  # gathered: both ranks skip the whole batch
    return memory.bank[:2], int(memory.bank_ptr)


def test_gathered_non_finite_batch_is_skipped_by_every_process():
    for stored, ptr in run_distributed(_gathered_non_finite_batch, 2):
        torch.testing.assert_close(stored, torch.tensor([[1.0, 1.0], [2.0, 2.0]]))
        assert ptr == 2
