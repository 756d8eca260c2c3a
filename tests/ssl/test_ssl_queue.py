import pytest
import torch

from pynsm.arch.swav_queue import SwaVQueue


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
    for view in range(2):
        # b2 filled the last two slots, then wrapped over the oldest entries of b1
        expected = torch.cat([b2[view][2:], b1[view][2:], b2[view][:2]])
        torch.testing.assert_close(after_two[view], expected)


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
