"""Clean stops: signals, and the process group a Trainer starts under torchrun."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import TensorDataset

from pynsm.train import (
    Trainer,
    TrainingDiverged,
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
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _group_worker(rank, world_size, port, folder):
    # what torchrun sets; no process group exists yet
    os.environ.update(
        WORLD_SIZE=str(world_size),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    report = {}
    trainer = Trainer(Line(), epochs=1, batch_size=2, progress=False)
    trainer.fit(_data())
    report["world"] = trainer.world_size
    report["after normal end"] = dist.is_initialized()
    trainer.epochs = 2
    trainer.fit(_data())  # a second fit starts (and ends) a group again
    report["after second fit"] = dist.is_initialized()

    nan = Line(lambda call: call == 2 and rank == 1 and nan.w.data.fill_(float("nan")))
    try:
        Trainer(nan, epochs=1, batch_size=2, progress=False).fit(_data())
    except TrainingDiverged:  # both ranks, though only rank 1 saw the NaN
        report["diverged"] = True
    report["after exception"] = dist.is_initialized()

    stop = Line(lambda call: call == 2 and os.kill(os.getpid(), signal.SIGTERM))
    try:
        Trainer(stop, epochs=1, batch_size=2, progress=False).fit(_data())
    except TrainingInterrupted:
        report["interrupted"] = True
    report["after signal"] = dist.is_initialized()
    torch.save(report, os.path.join(folder, f"{rank}.pt"))


def test_the_process_group_the_trainer_starts_is_destroyed_on_every_exit(tmp_path):
    mp.start_processes(
        _group_worker,
        args=(2, _free_port(), str(tmp_path)),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    for rank in range(2):
        report = torch.load(tmp_path / f"{rank}.pt")
        assert report == {
            "world": 2,
            "after normal end": False,
            "after second fit": False,
            "diverged": True,
            "after exception": False,
            "interrupted": True,
            "after signal": False,
        }


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
