"""Run a function on several CPU processes with a gloo process group (for tests).

Usage::

    def _body(rank, world_size, x):        # module-level, so it can be pickled
        ...
        return some_picklable_result

    results = run_distributed(_body, 2, x)   # list, one entry per rank
"""

from __future__ import annotations

import datetime
import gc
import os
import socket
import tempfile
import traceback
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world_size, port, fn, args, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    # a rendezvous or collective that hangs fails in a minute, not at pytest's 600 s
    dist.init_process_group(
        "gloo",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        result = fn(rank, world_size, *args)
        torch.save({"ok": True, "result": result}, os.path.join(out_dir, f"{rank}.pt"))
    except BaseException:
        torch.save(
            {"ok": False, "error": traceback.format_exc()},
            os.path.join(out_dir, f"{rank}.pt"),
        )
        raise
    finally:
        dist.destroy_process_group()
        # DDP wrappers left in reference cycles still hold the group's C++ object:
        # free them while the interpreter is alive, not at its finalization (where
        # the group's threads can be destroyed unjoined: SIGABRT, a failed test)
        gc.collect()


def run_distributed(fn: Callable[..., Any], world_size: int, *args: Any) -> list[Any]:
    """Call ``fn(rank, world_size, *args)`` on ``world_size`` gloo processes.

    Returns the list of return values by rank; re-raises a worker's error with its
    traceback.
    """
    with tempfile.TemporaryDirectory() as out_dir:
        port = _free_port()
        try:
            mp.start_processes(
                _worker,
                args=(world_size, port, fn, args, out_dir),
                nprocs=world_size,
                join=True,
                start_method="spawn",
            )
        except Exception as exc:  # surface the worker traceback, not only the exit code
            errors = []
            for r in range(world_size):
                path = os.path.join(out_dir, f"{r}.pt")
                if os.path.exists(path):
                    rec = torch.load(path, weights_only=False)
                    if not rec["ok"]:
                        errors.append(f"rank {r}:\n{rec['error']}")
            raise RuntimeError("\n".join(errors) or str(exc)) from exc
        return [
            torch.load(os.path.join(out_dir, f"{r}.pt"), weights_only=False)["result"]
            for r in range(world_size)
        ]
