"""The process group this library creates is released before interpreter exit."""

from __future__ import annotations

import gc
import weakref

import torch.distributed as dist

from pynsm.train import launch


def test_the_exit_handler_frees_the_group_and_forgets_it(monkeypatch, tmp_path):
    # a one-process gloo group, created the way torchrun's environment makes it
    monkeypatch.setenv("WORLD_SIZE", "1")
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    group = dist.group.WORLD
    monkeypatch.setattr(launch, "_OWNED_GROUP", group)
    alive = weakref.ref(group)
    del group
    launch._destroy_owned_group()
    assert not dist.is_initialized()
    # no reference is kept: the group's C++ threads were joined now, not left to
    # interpreter finalization (which can abort with SIGABRT)
    assert launch._OWNED_GROUP is None
    gc.collect()
    assert alive() is None


def test_a_group_the_user_replaced_is_left_alone(monkeypatch, tmp_path):
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        monkeypatch.setattr(launch, "_OWNED_GROUP", object())  # not the WORLD group
        launch._destroy_owned_group()
        assert dist.is_initialized()
        assert launch._OWNED_GROUP is None
    finally:
        dist.destroy_process_group()


class _Cycle:
    """An object in a reference cycle, as DDP wrappers end up: only the cyclic
    garbage collector frees it."""

    def __init__(self, group) -> None:
        self.group = group
        self.me = self


def test_a_group_the_user_destroyed_is_still_freed_before_exit(monkeypatch, tmp_path):
    # the example scripts destroy the group themselves after fit; a DDP wrapper
    # left in a reference cycle still holds its C++ object, which must be freed
    # by the exit handler, not at interpreter finalization (SIGABRT)
    monkeypatch.setenv("WORLD_SIZE", "1")
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    group = dist.group.WORLD
    monkeypatch.setattr(launch, "_OWNED_GROUP", group)
    alive = weakref.ref(group)
    gc.disable()  # no collection but the handler's
    try:
        _Cycle(group)
        del group
        dist.destroy_process_group()  # the user's
        assert alive() is not None  # the cycle holds it
        launch._destroy_owned_group()
        assert alive() is None
        assert launch._OWNED_GROUP is None
    finally:
        gc.enable()
