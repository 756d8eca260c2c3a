"""The process group this library creates is released before interpreter exit."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch.distributed as dist

from pynsm.train import launch


@pytest.fixture
def owned_group(monkeypatch, tmp_path):
    """A one-process gloo group, created the way torchrun's environment makes it,
    recorded as the one `init_distributed_from_env` created; yields a weak
    reference to it (the test holds no strong one)."""
    monkeypatch.setenv("WORLD_SIZE", "1")
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    monkeypatch.setattr(launch, "_OWNED_GROUP", dist.group.WORLD)
    yield weakref.ref(dist.group.WORLD)
    if dist.is_initialized():
        dist.destroy_process_group()


def test_the_exit_handler_frees_the_group_and_forgets_it(owned_group):
    launch._destroy_owned_group()
    assert not dist.is_initialized()
    # no reference is kept: the group's C++ threads were joined now, not left to
    # interpreter finalization (which can abort with SIGABRT)
    assert launch._OWNED_GROUP is None
    gc.collect()
    assert owned_group() is None


def test_a_group_the_user_replaced_is_left_alone(owned_group, monkeypatch):
    monkeypatch.setattr(launch, "_OWNED_GROUP", object())  # not the WORLD group
    launch._destroy_owned_group()
    assert dist.is_initialized()
    assert launch._OWNED_GROUP is None


class _Cycle:
    """An object in a reference cycle, as DDP wrappers end up: only the cyclic
    garbage collector frees it."""

    def __init__(self, group) -> None:
        self.group = group
        self.me = self


def test_a_group_the_user_destroyed_is_still_freed_before_exit(owned_group):
    # the example scripts destroy the group themselves after fit; a DDP wrapper
    # left in a reference cycle still holds its C++ object, which must be freed
    # by the exit handler, not at interpreter finalization (SIGABRT)
    gc.disable()  # no collection but the handler's
    try:
        _Cycle(owned_group())
        dist.destroy_process_group()  # the user's
        assert owned_group() is not None  # the cycle holds it
        launch._destroy_owned_group()
        assert owned_group() is None
        assert launch._OWNED_GROUP is None
    finally:
        gc.enable()
