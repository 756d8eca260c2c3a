"""One run per checkpoint file: an advisory lock next to it."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from typing import Any

import torch.distributed as dist

from pynsm.train.errors import CheckpointInUseError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are not guarded there
    fcntl = None  # type: ignore[assignment]

__all__ = ["CheckpointLock", "checkpoint_lock"]


class CheckpointLock:
    """Exclusive lock on ``<checkpoint>.lock`` while a run writes ``<checkpoint>``.

    Two runs writing the same checkpoint would overwrite each other's epochs and
    make ``resume`` continue a mixture. The second run therefore stops at once
    with :class:`~pynsm.train.errors.CheckpointInUseError`. The lock is an
    operating-system lock (``flock``) held through an open file, so it vanishes
    with its process — also after ``kill -9`` — and a stale lock file never blocks
    a later run. The lock file is removed when the run ends. On systems without
    ``fcntl`` (Windows) no lock is taken.

    Args:
        checkpoint_path: The checkpoint file to guard.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "last.pt")
        >>> with CheckpointLock(path):
        ...     try:
        ...         CheckpointLock(path).acquire()
        ...     except CheckpointInUseError as error:
        ...         print("in use")
        in use
        >>> os.path.exists(path + ".lock")
        False
    """

    def __init__(self, checkpoint_path: str | os.PathLike[str]) -> None:
        self.checkpoint_path = os.fspath(checkpoint_path)
        self.lock_path = self.checkpoint_path + ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`CheckpointInUseError` naming the owner."""
        if fcntl is None or self._fd is not None:
            return
        folder = os.path.dirname(os.path.abspath(self.lock_path))
        while True:
            try:  # also tells at the start of a run that the folder is not writable
                os.makedirs(folder, exist_ok=True)
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise OSError(
                    exc.errno,
                    f"cannot write checkpoints next to {self.checkpoint_path!r}: "
                    f"{exc.strerror}",
                ) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_owner(fd)
                os.close(fd)
                raise CheckpointInUseError(
                    f"{self.checkpoint_path!r} is in use by another run ({owner}); "
                    "give this run its own checkpoint folder, or stop the other one"
                ) from None
            except BaseException:
                os.close(fd)
                raise
            # the previous holder may have removed the file between our open and
            # our lock: then we hold a lock on a deleted file, so try again
            try:
                same = os.fstat(fd).st_ino == os.stat(self.lock_path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Remove the lock file and drop the lock (no-op when not held)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.remove(self.lock_path)  # while still locked: nobody can be mid-way
        except OSError:
            pass
        os.close(fd)  # closing releases the flock

    def __enter__(self) -> CheckpointLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read_owner(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "owner unknown"


@contextlib.contextmanager
def checkpoint_lock(path: str | None, rank: int, world_size: int) -> Iterator[None]:
    """Rank 0 holds :class:`CheckpointLock` on ``path``; every process learns if
    it could not (then all raise :class:`CheckpointInUseError`). No-op for ``None``.
    """
    lock, error = None, None
    if path is not None and rank == 0:
        lock = CheckpointLock(path)
        try:
            lock.acquire()
        except CheckpointInUseError as exc:
            error = exc
    if path is not None and world_size > 1 and dist.is_initialized():
        box = [None if error is None else str(error)]
        dist.broadcast_object_list(box, src=0)
        if box[0] is not None and error is None:
            error = CheckpointInUseError(box[0])
    if error is not None:
        raise error
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
