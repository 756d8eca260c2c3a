import pytest
import torch

from pynsm.ssl.swav_queue import SwaVQueue


def test_queue_starts_at_the_given_epoch():
    queue = SwaVQueue(queue_length=8, num_queues=2, start_queue_at_epoch=2)
    features = [torch.randn(4, 3), torch.randn(4, 3)]
    assert queue(features, epoch=0) is None
    assert queue(features, epoch=1) is None
    queued = queue(features, epoch=2)
    assert [tuple(q.shape) for q in queued] == [(8, 3), (8, 3)]
    assert queue.is_active(2) and not queue.is_active(1)


def test_queue_fills_first_in_first_out():
    queue = SwaVQueue(queue_length=6, num_queues=2, start_queue_at_epoch=0)
    b1 = [torch.randn(4, 3), torch.randn(4, 3)]
    b2 = [torch.randn(4, 3), torch.randn(4, 3)]
    b3 = [torch.randn(4, 3), torch.randn(4, 3)]
    queue(b1, epoch=0)
    after_one = queue(b2, epoch=0)  # what was stored before b2 was pushed
    for view in range(2):
        torch.testing.assert_close(after_one[view][:4], b1[view])
    after_two = queue(b3, epoch=0)
    after_three = queue(b1, epoch=0)
    for view in range(2):
        # b2 filled the last two slots, the rest of it was dropped (as lightly)
        expected = torch.cat([b1[view], b2[view][:2]])
        torch.testing.assert_close(after_two[view], expected)
        # and b3 started again at the first slot
        expected = torch.cat([b3[view], b2[view][:2]])
        torch.testing.assert_close(after_three[view], expected)


def test_queue_does_not_keep_gradients():
    queue = SwaVQueue(queue_length=4, num_queues=1)
    features = torch.randn(2, 3, requires_grad=True)
    queue([features], epoch=0)
    queued = queue([features * 2], epoch=0)
    assert not queued[0].requires_grad


def test_queue_bad_arguments():
    with pytest.raises(ValueError, match="queue_length"):
        SwaVQueue(queue_length=0)
    with pytest.raises(ValueError, match="start_queue_at_epoch"):
        SwaVQueue(queue_length=4, start_queue_at_epoch=-1)
    queue = SwaVQueue(queue_length=4, num_queues=2)
    with pytest.raises(ValueError, match="one per"):
        queue([torch.randn(2, 3)], epoch=0)


def test_queue_contents_travel_in_the_state_dict():
    torch.manual_seed(0)
    queue = SwaVQueue(queue_length=6, num_queues=2, start_queue_at_epoch=0)
    for _ in range(2):  # filled, and the write position is mid-bank
        queue([torch.randn(4, 5), torch.randn(4, 5)], epoch=0)
    state = queue.state_dict()
    restored = SwaVQueue(queue_length=6, num_queues=2, start_queue_at_epoch=0)
    restored.load_state_dict(state)
    nxt = [torch.randn(4, 5), torch.randn(4, 5)]
    for a, b in zip(queue(nxt, epoch=0), restored(nxt, epoch=0)):
        assert torch.equal(a, b)
    # and the next push overwrites the same (oldest) entries in both
    after = [torch.randn(4, 5), torch.randn(4, 5)]
    for a, b in zip(queue(after, epoch=0), restored(after, epoch=0)):
        assert torch.equal(a, b)
    # a fresh (never used) queue round-trips too, and a mismatched one is refused
    SwaVQueue(6).load_state_dict(SwaVQueue(6).state_dict())
    with pytest.raises(ValueError, match="features per view"):
        SwaVQueue(queue_length=3, num_queues=2).load_state_dict(state)


def test_swav_with_queue_resumes_bit_identically(tmp_path):
    from torch.utils.data import TensorDataset

    from pynsm.ssl import SwaV
    from pynsm.train import Trainer

    data = TensorDataset(
        torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    )

    def run(directory, epochs, resume=False):
        torch.manual_seed(0)
        model = SwaV(queue_length=16, start_queue_at_epoch=1)
        trainer = Trainer(
            model,
            epochs=epochs,
            batch_size=8,
            lr=1e-3,
            optimizer=torch.optim.AdamW,
            checkpoint_path=directory / "last.pt",
            progress=False,
        )
        trainer.fit(data, resume=resume)
        return model

    straight = run(tmp_path / "a", 3)
    run(tmp_path / "b", 2)
    resumed = run(tmp_path / "b", 3, resume=True)
    for (key, a), (_, b) in zip(
        straight.state_dict().items(), resumed.state_dict().items()
    ):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), key
    for a, b in zip(straight.queue.banks, resumed.queue.banks):
        assert torch.equal(a.bank, b.bank)


def test_queue_is_per_process_under_ddp():
    # the Trainer leaves modules marked this way out of DDP's buffer broadcast, so
    # every process keeps the features it enqueued (tests/train checks the effect)
    assert SwaVQueue(queue_length=4).ddp_rank_local is True


def test_non_finite_features_are_pushed_to_no_bank():
    queue = SwaVQueue(queue_length=6, num_queues=2, start_queue_at_epoch=0)
    first = [torch.randn(2, 3), torch.randn(2, 3)]
    queue(first, epoch=0)
    bad = [torch.randn(2, 3), torch.randn(2, 3)]
    bad[1][0, 0] = float("nan")  # one view only: neither bank takes the batch
    with pytest.warns(RuntimeWarning, match="SwaVQueue"):
        queue(bad, epoch=0)
    after = [torch.randn(2, 3), torch.randn(2, 3)]
    queued = queue(after, epoch=0)
    for view in range(2):
        assert torch.isfinite(queued[view]).all()
        torch.testing.assert_close(queued[view][:2], first[view])
    for view, bank in enumerate(queue.banks):
        assert int(bank.bank_ptr) == 4  # both banks still aligned
        torch.testing.assert_close(bank.bank[2:4], after[view])
