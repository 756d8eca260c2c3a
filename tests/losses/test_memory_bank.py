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


def test_fifo_update_returns_entries_from_before_the_update():
    memory = MemoryBankModule(size=(5, 3)).double()
    batches = [torch.randn(2, 3, dtype=torch.float64) for _ in range(4)]
    stored = list(memory.bank.clone())  # plain FIFO list model of the bank
    for batch in batches:
        before = memory.bank.clone()
        _, returned = memory(batch, update=True)
        torch.testing.assert_close(returned, before.T)
        for row in batch:
            stored.append(row)
            stored.pop(0)
    # 8 rows through a ring of 5: rows 3..7 survive, at (arrival index) mod 5
    arrivals = torch.cat(batches)
    expected = torch.empty(5, 3, dtype=torch.float64)
    for index in range(3, 8):
        expected[index % 5] = arrivals[index]
    torch.testing.assert_close(memory.bank, expected)
    ptr = int(memory.bank_ptr)
    assert ptr == 8 % 5
    by_age = torch.stack([memory.bank[(ptr + j) % 5] for j in range(5)])
    torch.testing.assert_close(by_age, torch.stack(stored))


def test_batch_larger_than_bank_keeps_newest_rows():
    memory = MemoryBankModule(size=3).double()
    batch = torch.randn(7, 2, dtype=torch.float64)
    memory(batch, update=True)
    assert sorted(memory.bank.tolist()) == sorted(batch[-3:].tolist())


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
    for _ in range(3):
        source(torch.randn(3, 4), update=True)
    state = source.state_dict()
    assert set(state) == {"bank", "bank_ptr"}
    resumed = MemoryBankModule(size=7)  # not yet allocated: adopts the saved shape
    resumed.load_state_dict(state)
    torch.testing.assert_close(resumed.bank, source.bank)
    assert int(resumed.bank_ptr) == int(source.bank_ptr) == 2
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
