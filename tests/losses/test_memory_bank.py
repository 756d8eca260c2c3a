"""MemoryBankModule: lazy random unit-vector init, FIFO ring update, returned copy."""

import pytest
import torch

from pynsm.losses import MemoryBankModule


def test_size_zero_disables_the_bank():
    output = torch.randn(3, 4)
    out, bank = MemoryBankModule(size=0)(output, update=True)
    assert out is output and bank is None


def test_default_size():
    assert MemoryBankModule().size == 65536


def test_initial_bank_is_random_unit_columns():
    memory = MemoryBankModule(size=10)
    _, bank = memory(torch.randn(3, 4))
    assert bank.shape == (4, 10)
    torch.testing.assert_close(bank.norm(dim=0), torch.ones(10))
    assert torch.linalg.matrix_rank(bank) == 4  # not a constant fill
    assert int(memory.bank_ptr) == 0


def test_fifo_update_returns_entries_from_before_the_update():
    memory = MemoryBankModule(size=5).double()
    batches = [torch.randn(2, 3, dtype=torch.float64) for _ in range(4)]
    _, first = memory(batches[0], update=True)
    stored = [first[:, j].clone() for j in range(5)]

    def push(rows):  # plain FIFO list model of the bank
        for row in rows:
            stored.append(row)
            stored.pop(0)

    push(batches[0])
    for batch in batches[1:]:
        before = memory.bank.clone()
        _, returned = memory(batch, update=True)
        torch.testing.assert_close(returned, before)
        push(batch)
    # the bank holds the 5 newest rows; position = (arrival index) mod 5
    arrivals = torch.cat(batches)  # 8 rows: rows 3..7 survive
    expected = torch.empty(3, 5, dtype=torch.float64)
    for index in range(3, 8):
        expected[:, index % 5] = arrivals[index]
    torch.testing.assert_close(memory.bank, expected)
    torch.testing.assert_close(
        torch.stack(sorted_by_age(memory), 1), torch.stack(stored, 1)
    )
    assert int(memory.bank_ptr) == 8 % 5


def sorted_by_age(memory):
    ptr = int(memory.bank_ptr)
    return [memory.bank[:, (ptr + j) % memory.size] for j in range(memory.size)]


def test_batch_larger_than_bank_keeps_newest_rows():
    memory = MemoryBankModule(size=3).double()
    batch = torch.randn(7, 2, dtype=torch.float64)
    memory(batch, update=True)
    assert sorted(memory.bank.T.tolist()) == sorted(batch[-3:].tolist())


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


def test_labels_are_ignored():
    memory = MemoryBankModule(size=4)
    output = torch.randn(2, 3)
    _, bank = memory(output, labels=torch.tensor([1, 0]))
    assert bank.shape == (3, 4)


@pytest.mark.parametrize("size", [-1, 2.5, True])
def test_invalid_size_raises(size):
    with pytest.raises(ValueError, match="size"):
        MemoryBankModule(size=size)


def test_wrong_output_shape_raises():
    memory = MemoryBankModule(size=4)
    with pytest.raises(ValueError, match="output"):
        memory(torch.randn(2, 3, 4))
    memory(torch.randn(2, 3))
    with pytest.raises(ValueError, match="dimension"):
        memory(torch.randn(2, 5))
