"""Turn SIGINT/SIGTERM into a clean stop that never cuts a checkpoint write in half.

A Python signal handler runs only when the main thread executes Python code. A
process waiting inside torch's C++ code for the other processes (the rendezvous
of ``init_process_group``, a collective while rank 0 evaluates) would therefore
hold the signal until the wait ends, which may be never. Such waits run inside
:meth:`SignalGuard.blocking`, where the signal's default action applies: the
process ends at once (status 143 for SIGTERM, 130 for SIGINT, as a shell or a
scheduler reports it). Nothing is lost: no checkpoint is being written there.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

from pynsm.train.errors import TrainingInterrupted

__all__ = ["SignalGuard"]

_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM") if hasattr(signal, name)
)


class SignalGuard:
    """While active, SIGINT and SIGTERM raise :class:`TrainingInterrupted`.

    Inside :meth:`critical` (a checkpoint write) the signal is remembered and
    raised when the section ends, so the write completes. The previous handlers
    are restored on exit. A signal the process ignores stays ignored. Signals can
    only be handled in the main thread; in any other thread the guard does
    nothing.

    Example:
        >>> import os, signal
        >>> guard = SignalGuard()
        >>> try:
        ...     with guard:
        ...         with guard.critical():
        ...             os.kill(os.getpid(), signal.SIGTERM)
        ...             print("the write finishes")
        ... except TrainingInterrupted as error:
        ...     print(error.exit_code)
        the write finishes
        143
    """

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}
        self._depth = 0
        self._pending: int | None = None

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():
            for signum in _SIGNALS:
                # a signal the process ignores (e.g. SIGINT of a background job)
                # stays ignored
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        self._pending = None

    @contextlib.contextmanager
    def blocking(self) -> Iterator[None]:
        """A wait in C++ that a Python handler cannot interrupt (see the module
        docstring): SIGINT and SIGTERM end the process at once while inside.

        Example:
            >>> import signal
            >>> with SignalGuard() as guard, guard.blocking():
            ...     signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
            True
        """
        if not self._previous or self._depth > 0:  # not active, or in a write
            yield
            return
        for signum in self._previous:
            signal.signal(signum, signal.SIG_DFL)
        try:
            yield
        finally:
            for signum in self._previous:
                signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._depth > 0:
            self._pending = signum
            return
        raise TrainingInterrupted(signum)

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        """A section a signal must not interrupt; the signal is raised after it."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if self._depth == 0 and self._pending is not None:
            signum, self._pending = self._pending, None
            raise TrainingInterrupted(signum)
