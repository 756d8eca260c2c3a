"""Checkpoints: atomic writes, weights-only loading, clear errors."""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
import zipfile

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from pynsm.arch import SimilarityMatching
from pynsm.train import (
    CheckpointError,
    CheckpointInUseError,
    CircuitTask,
    ResumeSettingsError,
    Trainer,
    load_checkpoint,
    save_checkpoint,
)


def _trained(tmp_path, epochs=1):
    torch.manual_seed(0)
    task = CircuitTask(SimilarityMatching(nn.Linear(4, 3), 3))
    trainer = Trainer(
        task,
        epochs=epochs,
        batch_size=4,
        checkpoint_path=tmp_path / "last.pt",
        progress=False,
    )
    trainer.fit(TensorDataset(torch.randn(12, 4)))
    return trainer


def test_checkpoint_is_a_weights_only_dict_with_training_state(tmp_path):
    trainer = _trained(tmp_path, epochs=2)
    raw = torch.load(tmp_path / "last.pt", weights_only=True)
    assert {
        "model",
        "optimizer",
        "scheduler",
        "epoch",
        "step",
        "rng",
        "history",
    } <= set(raw)
    assert raw["epoch"] == 2 and raw["step"] == 6 and len(raw["history"]) == 2
    for key, value in trainer.task.state_dict().items():
        assert torch.equal(raw["model"][key], value)
    assert {"python", "numpy", "torch"} <= set(raw["rng"][0])
    assert os.listdir(tmp_path) == ["last.pt"]  # no temporary file left behind


def test_failed_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    trainer = _trained(tmp_path)
    before = load_checkpoint(tmp_path / "last.pt")
    real_save = torch.save

    def broken_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.seek(0)
        f.truncate(100)  # half-written file, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with torch.no_grad():
        for p in trainer.task.parameters():
            p.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint(tmp_path / "last.pt")
    monkeypatch.undo()
    after = load_checkpoint(tmp_path / "last.pt")
    for key, value in before["model"].items():
        assert torch.equal(after["model"][key], value)
    assert os.listdir(tmp_path) == ["last.pt"]


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo owned",))


def test_foreign_and_corrupt_checkpoints_are_clear_errors(tmp_path):
    trainer = _trained(tmp_path)
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Payload()}, evil)
    with pytest.raises(CheckpointError, match="code execution"):
        load_checkpoint(evil)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(corrupt)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((tmp_path / "last.pt").read_bytes()[:200])
    with pytest.raises(CheckpointError):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {"w": torch.ones(1)}}, foreign)  # loadable, not ours
    with pytest.raises(CheckpointError, match="not a pynsm training checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
    # a pynsm checkpoint of another model does not fit this trainer
    save_checkpoint(
        {
            "model": {"w": torch.ones(1)},
            "optimizer": {},
            "epoch": 1,
            "step": 1,
            "rng": [],
        },
        tmp_path / "other.pt",
    )
    with pytest.raises(CheckpointError, match="does not fit"):
        trainer.load_checkpoint(tmp_path / "other.pt")


def test_checkpoint_that_fits_the_model_but_not_the_optimizer_changes_nothing(
    tmp_path,
):
    trainer = _trained(tmp_path)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    state["model"] = {k: v + 1.0 for k, v in state["model"].items()}  # fits the model
    state["optimizer"]["param_groups"] = []  # but not the optimizer
    save_checkpoint(state, tmp_path / "half.pt")
    before = {k: v.clone() for k, v in trainer.task.state_dict().items()}
    with pytest.raises(CheckpointError, match="does not fit"):
        trainer.load_checkpoint(tmp_path / "half.pt")
    for key, value in trainer.task.state_dict().items():
        assert torch.equal(value, before[key]), key


# ---------------------------------------------------------------- all-or-nothing
def _fresh(tmp_path, optimizer=None, **kwargs):
    torch.manual_seed(1)
    task = CircuitTask(SimilarityMatching(nn.Linear(4, 3), 3))
    return Trainer(
        task,
        epochs=3,
        batch_size=4,
        optimizer=optimizer,
        checkpoint_path=tmp_path / "fresh.pt",
        progress=False,
        **kwargs,
    )


def _everything(trainer):
    """Model, optimizer and trainer state, as comparable values."""
    return (
        {k: v.clone() for k, v in trainer.task.state_dict().items()},
        repr(trainer.optimizer.state_dict()),
        trainer.epoch,
        trainer.step,
        list(trainer.history),
        torch.get_rng_state().clone(),
    )


def _assert_unchanged(trainer, before):
    model, optimizer, epoch, step, history, rng = before
    for key, value in trainer.task.state_dict().items():
        assert torch.equal(value, model[key]), key
    assert repr(trainer.optimizer.state_dict()) == optimizer
    assert (trainer.epoch, trainer.step, trainer.history) == (epoch, step, history)
    assert torch.equal(torch.get_rng_state(), rng)


def _tampered(tmp_path, change):
    """A checkpoint of 2 epochs whose weights differ from a fresh trainer's, changed."""
    _trained(tmp_path, epochs=2)
    state = load_checkpoint(tmp_path / "last.pt")
    state["model"] = {k: v + 1.0 for k, v in state["model"].items()}
    change(state)
    save_checkpoint(state, tmp_path / "bad.pt")
    return tmp_path / "bad.pt"


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda s: s.update(epoch="2"), "'epoch' must be an int"),
        (lambda s: s.update(step=-1), "'step' must be an int"),
        (lambda s: s.update(rng=[{"python": 1}]), "RNG state"),
        (lambda s: s["rng"][0].update(torch=torch.zeros(3, dtype=torch.uint8)), "RNG"),
        (lambda s: s.update(history=[{"loss": "low"}]), "history entry 0"),
        (lambda s: s.update(history={"loss": 1.0}), "'history' must be a list"),
        (lambda s: s.pop("optimizer"), "lacks training state"),
        (lambda s: s.update(optimizer_class="torch.optim.adamw.AdamW"), "AdamW"),
        (lambda s: s["model"].pop("circuit.competitor.weight"), "another model"),
        (
            lambda s: s["model"].update(extra=torch.ones(1)),
            "unexpected",
        ),
        (
            lambda s: s["model"].update(
                {"circuit.encoders.0.weight": torch.ones(5, 4)}
            ),
            "shape",
        ),
        (
            lambda s: s["optimizer"]["state"].update(
                {0: {"momentum_buffer": torch.ones(7)}}
            ),
            "shape",
        ),
        (lambda s: s.update(metadata={"f": torch.ones(1)}), "metadata"),
    ],
)
def test_a_bad_field_changes_nothing(tmp_path, change, match):
    bad = _tampered(tmp_path, change)
    trainer = _fresh(tmp_path)
    before = _everything(trainer)
    with pytest.raises(CheckpointError, match=match) as info:
        trainer.load_checkpoint(bad)
    assert "\n" not in str(info.value)
    _assert_unchanged(trainer, before)


def test_sgd_checkpoint_resumed_by_adamw_changes_nothing(tmp_path):
    _trained(tmp_path, epochs=1)  # SGD
    state = load_checkpoint(tmp_path / "last.pt")
    trainer = _fresh(tmp_path, optimizer=torch.optim.AdamW, lr=1e-3)
    data = TensorDataset(torch.randn(8, 4))
    before = _everything(trainer)
    with pytest.raises(CheckpointError, match="SGD.*AdamW"):
        trainer.fit(data, resume=tmp_path / "last.pt")
    _assert_unchanged(trainer, before)
    # a checkpoint from before the optimizer class was stored: its settings tell
    state.pop("optimizer_class")
    save_checkpoint(state, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="another optimizer"):
        trainer.load_checkpoint(tmp_path / "old.pt")
    _assert_unchanged(trainer, before)


def test_failure_while_applying_rolls_everything_back(tmp_path, monkeypatch):
    _trained(tmp_path, epochs=2)
    trainer = _fresh(tmp_path)
    scheduler = torch.optim.lr_scheduler.StepLR(trainer.optimizer, 1)
    real_load = scheduler.load_state_dict

    def broken(state_dict):  # fails on the checkpoint's state, not on the rollback
        if state_dict["last_epoch"] == 0:
            real_load(state_dict)
            return
        raise ValueError("scheduler state from another world")

    trainer.scheduler = scheduler
    state = load_checkpoint(tmp_path / "last.pt")
    state["scheduler"] = {**scheduler.state_dict(), "last_epoch": 5}
    state["scheduler_class"] = "torch.optim.lr_scheduler.StepLR"
    save_checkpoint(state, tmp_path / "sched.pt")
    before = _everything(trainer)
    monkeypatch.setattr(scheduler, "load_state_dict", broken)
    with pytest.raises(CheckpointError, match="another world"):
        trainer.load_checkpoint(tmp_path / "sched.pt")
    _assert_unchanged(trainer, before)


def test_truncated_file_is_a_checkpoint_error_not_an_os_error(tmp_path):
    _trained(tmp_path)
    data = (tmp_path / "last.pt").read_bytes()
    for keep in (len(data) - 1, len(data) // 2, 10, 0):
        (tmp_path / "cut.pt").write_bytes(data[:keep])
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(tmp_path / "cut.pt")
        assert not isinstance(info.value.__cause__, FileNotFoundError)
        assert "\n" not in str(info.value)


def _tensor_data_offset(path, member_suffix):
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(member_suffix))
    with open(path, "rb") as handle:
        handle.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", handle.read(4))
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def test_flipped_bit_in_the_weights_is_detected(tmp_path):
    _trained(tmp_path)
    path = tmp_path / "last.pt"
    data = bytearray(path.read_bytes())
    offset, size = _tensor_data_offset(path, "data/0")
    data[offset + size // 2] ^= 0x01  # one bit of one stored float
    (tmp_path / "flipped.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "flipped.pt")
    assert load_checkpoint(path)["epoch"] == 1  # the original still loads


def test_a_folder_or_unreadable_file_is_a_checkpoint_error(tmp_path):
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(CheckpointError, match="folder"):
        load_checkpoint(tmp_path / "dir.pt")
    if os.geteuid() != 0:  # root reads anything
        _trained(tmp_path)
        os.chmod(tmp_path / "last.pt", 0)
        try:
            with pytest.raises(CheckpointError, match="cannot be read"):
                load_checkpoint(tmp_path / "last.pt")
        finally:
            os.chmod(tmp_path / "last.pt", 0o644)


def test_metadata_is_stored_and_returned(tmp_path):
    metadata = {"model": "sm", "shape": [1, 8, 8], "options": {"tol": 0.0, "n": None}}
    trainer = _fresh(tmp_path, checkpoint_metadata=metadata)
    trainer.fit(TensorDataset(torch.randn(8, 4)))
    loaded = load_checkpoint(tmp_path / "fresh.pt")
    assert loaded["metadata"] == metadata
    assert torch.load(tmp_path / "fresh.pt", weights_only=True)["metadata"] == metadata
    save_checkpoint({"model": {}}, tmp_path / "plain.pt")
    assert load_checkpoint(tmp_path / "plain.pt")["metadata"] == {}
    with pytest.raises(TypeError, match="checkpoint_metadata"):
        _fresh(tmp_path, checkpoint_metadata={"f": torch.ones(1)})


def test_stale_temp_files_of_a_killed_save_are_removed(tmp_path):
    trainer = _trained(tmp_path)
    stale = [
        # a writer on this host that no longer runs (above Linux's largest pid)
        tmp_path / f".last.pt.{socket.gethostname()}-{2**22 + 12345}-abc.tmp",
        tmp_path / ".last.pt.k3j4h5.tmp",  # written by an older version
    ]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    other = tmp_path / ".other.pt.x.tmp"  # another checkpoint's: not ours to remove
    other.write_bytes(b"x")
    trainer.save_checkpoint(tmp_path / "last.pt")
    assert sorted(os.listdir(tmp_path)) == [".other.pt.x.tmp", "last.pt"]


def test_a_second_run_on_the_same_checkpoint_is_refused(tmp_path):
    path = tmp_path / "shared.pt"
    seen = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def training_loss(self, batch):
            if not seen:
                seen.append(os.path.exists(str(path) + ".lock"))
                other = Trainer(Probe(), epochs=1, checkpoint_path=path, progress=False)
                with pytest.raises(CheckpointInUseError, match="in use by another run"):
                    other.fit(TensorDataset(torch.randn(4, 1)))
            return (self.w - batch[0]).pow(2).mean()

    Trainer(Probe(), epochs=1, checkpoint_path=path, progress=False).fit(
        TensorDataset(torch.randn(4, 1))
    )
    assert seen == [True]
    assert sorted(os.listdir(tmp_path)) == ["shared.pt"]  # lock removed at the end


# what torch's zip writer raises when the disk fills up (the errno is lost)
_ZIP_WRITER_FULL = RuntimeError(
    "[enforce fail at inline_container.cc:664] . unexpected pos 4480 vs 4374"
)


@pytest.mark.parametrize(
    "failure",
    [OSError(errno.ENOSPC, "No space left on device"), _ZIP_WRITER_FULL],
    ids=["oserror", "zip-writer"],
)
def test_full_disk_keeps_the_previous_checkpoint_and_says_so(
    tmp_path, monkeypatch, failure
):
    trainer = _trained(tmp_path)
    before = (tmp_path / "last.pt").read_bytes()

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise failure

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError) as info:
        trainer.save_checkpoint(tmp_path / "last.pt")
    message = str(info.value)
    assert info.value.errno == errno.ENOSPC and "\n" not in message
    assert "cannot write checkpoint" in message
    assert f"No space left on device in {str(tmp_path)!r}" in message
    assert (tmp_path / "last.pt").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]


def test_other_zip_writer_failures_are_one_line_oserrors(tmp_path, monkeypatch):
    def broken(obj, f, *args, **kwargs):
        raise RuntimeError(
            "[enforce fail at inline_container.cc:858] . PytorchStreamWriter "
            "failed writing file data/0: file write failed\nException raised from"
        )

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError) as info:
        save_checkpoint({"w": torch.ones(1)}, tmp_path / "last.pt")
    assert str(info.value).endswith(
        ": the write failed (PytorchStreamWriter failed writing file data/0: "
        "file write failed)"
    )
    assert info.value.errno == errno.EIO and os.listdir(tmp_path) == []


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_a_checkpoint_follows_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        save_checkpoint({"w": torch.ones(1)}, tmp_path / "last.pt")
        save_checkpoint({"w": torch.ones(1)}, tmp_path / "last.pt")  # replaced
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "last.pt").stat().st_mode) == 0o666 & ~umask


def test_an_unwritable_checkpoint_folder_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    calls = []

    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def training_loss(self, batch):
            calls.append(1)
            return self.w.sum()

    trainer = Trainer(
        Counting(), epochs=1, checkpoint_path=blocker / "last.pt", progress=False
    )
    with pytest.raises(OSError, match="cannot write checkpoints next to"):
        trainer.fit(TensorDataset(torch.randn(4, 1)))
    assert calls == []  # no work done


@pytest.mark.parametrize(
    ("changed", "setting"),
    [
        ({"seed": 1}, "seed=0, this run has seed=1"),
        ({"batch_size": 3}, "batch_size=4, this run has batch_size=3"),
    ],
)
def test_resuming_with_another_data_order_is_refused(tmp_path, changed, setting):
    _trained(tmp_path)
    torch.manual_seed(0)
    task = CircuitTask(SimilarityMatching(nn.Linear(4, 3), 3))
    before = {k: v.clone() for k, v in task.state_dict().items()}
    options = {"epochs": 2, "batch_size": 4, "progress": False, **changed}
    trainer = Trainer(task, checkpoint_path=tmp_path / "last.pt", **options)
    with pytest.raises(ResumeSettingsError) as info:
        trainer.fit(TensorDataset(torch.randn(12, 4)), resume=True)
    message = str(info.value)
    assert setting in message and "allow_setting_changes=True" in message
    assert "\n" not in message and isinstance(info.value, CheckpointError)
    name = next(iter(changed))
    assert info.value.settings == {
        name: (4 if name == "batch_size" else 0, changed[name])
    }
    assert trainer.epoch == 0 and all(
        torch.equal(v, before[k]) for k, v in task.state_dict().items()
    )  # nothing applied
    history = trainer.fit(
        TensorDataset(torch.randn(12, 4)), resume=True, allow_setting_changes=True
    )
    assert [entry["epoch"] for entry in history] == [1, 2]


def test_a_checkpoint_from_another_world_size_is_refused(tmp_path):
    trainer = _trained(tmp_path)
    trainer.world_size = 2  # as if resumed by two processes
    with pytest.raises(
        ResumeSettingsError, match="world_size=1, this run has world_size=2"
    ):
        trainer.load_checkpoint(tmp_path / "last.pt")
