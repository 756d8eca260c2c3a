"""Clean stops: signals, and the process group a Trainer starts under torchrun."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from pynsm.train import (
    Trainer,
    TrainingInterrupted,
    load_checkpoint,
)


class Line(nn.Module):
    def __init__(self, on_call=None):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2))
        self.on_call = on_call
        self.calls = 0

    def training_loss(self, batch):
        self.calls += 1
        if self.on_call is not None:
            self.on_call(self.calls)
        return (batch[0] @ self.w - 1).pow(2).mean()


def _data():
    return TensorDataset(torch.randn(8, 2))


def test_sigterm_during_a_save_waits_for_the_save(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    real_save = torch.save

    def save_then_signal(obj, f, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives in the middle of the write
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_then_signal)
    trainer = Trainer(
        Line(), epochs=3, batch_size=4, checkpoint_path=path, progress=False
    )
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as info:
        trainer.fit(_data())
    assert info.value.exit_code == 143 and info.value.signum == signal.SIGTERM
    assert load_checkpoint(path)["epoch"] == 1  # the write of epoch 1 completed
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]  # no temp file, no lock
    assert signal.getsignal(signal.SIGTERM) is previous  # handler given back


def test_ctrl_c_mid_epoch_is_training_interrupted(tmp_path):
    def interrupt(call):
        if call == 3:  # first batch of epoch 2
            os.kill(os.getpid(), signal.SIGINT)

    trainer = Trainer(
        Line(interrupt),
        epochs=3,
        batch_size=4,
        checkpoint_path=tmp_path / "a.pt",
        progress=False,
    )
    with pytest.raises(TrainingInterrupted) as info:
        trainer.fit(_data())
    assert isinstance(info.value, KeyboardInterrupt) and info.value.exit_code == 130
    assert load_checkpoint(tmp_path / "a.pt")["epoch"] == 1
    assert sorted(os.listdir(tmp_path)) == ["a.pt"]


_SCRIPT = textwrap.dedent(
    """
    import sys, time, torch
    from torch import nn
    from torch.utils.data import TensorDataset
    from pynsm.train import Trainer, TrainingInterrupted

    class Slow(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(2))
        def training_loss(self, batch):
            time.sleep(0.05)
            return (batch[0] @ self.w - 1).pow(2).mean()

    trainer = Trainer(Slow(), epochs=1000, batch_size=2, checkpoint_path=sys.argv[1],
                      progress=False)
    try:
        trainer.fit(TensorDataset(torch.randn(4, 2)))
    except TrainingInterrupted as error:
        print(error, file=sys.stderr)
        sys.exit(error.exit_code)
    """
)


def test_sigterm_stops_a_running_fit_with_status_143(tmp_path):
    path = tmp_path / "last.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", _SCRIPT, str(path)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not path.exists():  # wait for the first checkpoint
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143
    assert stderr.strip() == "training interrupted by SIGTERM"
    assert load_checkpoint(path)["epoch"] >= 1
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]


# ------------------------------------------------ process group under torchrun
# Workers are separate interpreters launched by environment variables alone (no
# torchrun agent holds a store), as on many clusters; every wait has a deadline,
# so a hang fails in seconds instead of eating pytest-timeout's 10 minutes.
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(script, rank, world_size, port, *args):
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "WORLD_SIZE": str(world_size),
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    return subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(procs, timeout):
    """Each process's (returncode, stdout, stderr); kills them all on a deadline."""
    deadline = time.monotonic() + timeout
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
            results.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return results


_GROUP_SCRIPT = textwrap.dedent(
    """
    import atexit, json, os, signal, sys, torch
    import torch.distributed as dist
    from torch import nn
    from torch.utils.data import TensorDataset
    from pynsm.train import Trainer, TrainingDiverged, TrainingInterrupted

    class Line(nn.Module):
        def __init__(self, on_call=None):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(2))
            self.on_call, self.calls = on_call, 0
        def training_loss(self, batch):
            self.calls += 1
            if self.on_call is not None:
                self.on_call(self.calls)
            return (batch[0] @ self.w - 1).pow(2).mean()

    rank = int(os.environ["RANK"])
    data = TensorDataset(torch.randn(8, 2))
    report = {}
    # registered before the trainer's own exit handler, so it runs after it
    atexit.register(lambda: print(json.dumps(
        {**report, "at exit": dist.is_initialized()}), flush=True))
    trainer = Trainer(Line(), epochs=1, batch_size=2, progress=False)
    trainer.fit(data)
    group = dist.group.WORLD
    report["world"] = trainer.world_size
    report["after normal end"] = dist.is_initialized()
    trainer.epochs = 2
    trainer.fit(data)  # no second rendezvous: the group is reused
    report["second fit reuses it"] = dist.group.WORLD is group

    nan = Line(lambda call: call == 2 and rank == 1 and nan.w.data.fill_(float("nan")))
    try:
        Trainer(nan, epochs=1, batch_size=2, progress=False).fit(data)
    except TrainingDiverged:  # both ranks, though only rank 1 saw the NaN
        report["diverged"] = True
    stop = Line(lambda call: call == 2 and os.kill(os.getpid(), signal.SIGTERM))
    try:
        Trainer(stop, epochs=1, batch_size=2, progress=False).fit(data)
    except TrainingInterrupted:
        report["interrupted"] = True
    report["still reused"] = dist.group.WORLD is group
    """
)


@pytest.mark.timeout(120)
def test_the_process_group_a_fit_starts_is_kept_and_destroyed_at_exit():
    port = _free_port()
    procs = [_launch(_GROUP_SCRIPT, rank, 2, port) for rank in range(2)]
    for code, out, err in _finish(procs, timeout=90):
        assert code == 0, err
        assert json.loads(out.strip().splitlines()[-1]) == {
            "world": 2,
            "after normal end": True,
            "second fit reuses it": True,
            "diverged": True,
            "interrupted": True,
            "still reused": True,
            "at exit": False,
        }


_WAIT_SCRIPT = textwrap.dedent(
    """
    import os, sys, time, torch
    from torch import nn
    from torch.utils.data import TensorDataset
    from pynsm.train import Trainer

    class Line(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(2))
        def training_loss(self, batch):
            return (batch[0] @ self.w - 1).pow(2).mean()

    def slow_metrics(task):  # rank 0 evaluates for a long time
        open(sys.argv[1], "w").close()
        time.sleep(100)
        return {}

    Trainer(Line(), epochs=1, batch_size=2, progress=False,
            epoch_metrics=slow_metrics).fit(TensorDataset(torch.randn(8, 2)))
    """
)


def _wait_for(condition, procs, seconds=60):
    deadline = time.monotonic() + seconds
    while not condition():
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)  # inside the wait by now


def _port_open(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_rendezvous_ends_the_process_at_once(tmp_path, signum):
    port = _free_port()
    rank0 = _launch(_WAIT_SCRIPT, 0, 2, port, tmp_path / "evaluating")
    try:  # rank 1 never comes: rank 0 waits for it in init_process_group
        _wait_for(lambda: _port_open(port), [rank0])
        rank0.send_signal(signum)
        [(code, _, err)] = _finish([rank0], timeout=15)
    finally:
        if rank0.poll() is None:
            rank0.kill()
    assert code == -signum, err  # a shell reports 128 + signum: 143 or 130


@pytest.mark.timeout(120)
def test_sigterm_while_rank_0_evaluates_ends_the_other_rank_at_once(tmp_path):
    port, marker = _free_port(), tmp_path / "evaluating"
    procs = [_launch(_WAIT_SCRIPT, rank, 2, port, marker) for rank in range(2)]
    try:
        _wait_for(marker.exists, procs)
        procs[1].send_signal(signal.SIGTERM)
        [(code, _, err)] = _finish([procs[1]], timeout=15)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert code == -signal.SIGTERM, err


def test_an_ignored_signal_stays_ignored(tmp_path):
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a background job
    try:
        seen = []
        trainer = Trainer(
            Line(lambda call: seen.append(signal.getsignal(signal.SIGINT))),
            epochs=1,
            batch_size=4,
            progress=False,
        )
        trainer.fit(_data())
        assert seen == [signal.SIG_IGN, signal.SIG_IGN]
    finally:
        signal.signal(signal.SIGINT, previous)
