"""``pynsm train``: the report, exact resume, scoped threads, failures and signals."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from _cli_helpers import ROOT, digits_arrays, one_line_error, subprocess_env
from torch import nn

from pynsm import cli
from pynsm.cli import train as cli_train
from pynsm.train import load_checkpoint

pytest.importorskip("sklearn")


def test_json_report_and_closing_table(tmp_path, small_npz, capsys):
    report = tmp_path / "out" / "report.json"
    argv = ["train", "--dataset", small_npz, "--epochs", "2", "--no-progress"]
    assert cli.main([*argv, "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "1-shot linear probe" in out and "5-shot linear probe" in out
    assert "all-label linear probe" in out and "kNN" in out
    result = json.loads(report.read_text())
    # existing keys
    assert result["model"] == "supervised-sm" and result["world_size"] == 1
    assert result["num_train"] + result["num_test"] == 200
    assert result["num_classes"] == 10  # labels 0, 1e9, ... remapped to 0..9
    # the dataset and the split evaluated on (issue 14), the recipe of the 8x8 size
    assert result["dataset"] == small_npz and result["recipe"] == "small"
    assert (result["train_size"], result["test_size"]) == (150, 50)
    assert result["image_shape"] == [1, 8, 8] and result["split"] == "stratified"
    assert "evaluated on the stratified 25% split, 50 images" in out
    assert result["train_seconds"] > 0 and result["eval_seconds"] > 0
    for key in ("test_accuracy", "random_init_accuracy", "pixel_accuracy"):
        assert 0.0 <= result[key] <= 1.0, key
    # k-shot readouts of the trained model, the untrained one and the pixels
    for key in (
        "fewshot_accuracy",
        "random_init_fewshot_accuracy",
        "pixel_fewshot_accuracy",
    ):
        assert set(result[key]) == {"1", "5"}, key
        assert all(0.0 <= v <= 1.0 for v in result[key].values()), key
    assert 0.0 <= result["knn_accuracy"] <= 1.0
    assert 0.0 <= result["random_init_knn_accuracy"] <= 1.0
    assert 0.0 <= result["pixel_knn_accuracy"] <= 1.0
    # the supervised circuit's own prediction, once the circuit has one
    from pynsm.arch import SupervisedSimilarityMatching

    has_predict = callable(getattr(SupervisedSimilarityMatching, "predict", None))
    assert ("circuit_accuracy" in result) == has_predict
    if has_predict:
        assert 0.0 <= result["circuit_accuracy"] <= 1.0
        assert "circuit's own prediction" in out
    # per-epoch kNN in the history
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    for entry in result["history"]:
        assert isinstance(entry["loss"], float) and 0 <= entry["knn_accuracy"] <= 1
    # 200 images: the last epoch's kNN is the final one (same subset: everything)
    assert result["history"][-1]["knn_accuracy"] == result["knn_accuracy"]


def test_exact_resume_and_metadata(tmp_path, small_npz):
    common = ["train", "--dataset", small_npz, "--no-progress", "--seed", "3"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert cli.main([*common, "--epochs", "2", "--checkpoint-dir", str(straight)]) == 0
    assert cli.main([*common, "--epochs", "1", "--checkpoint-dir", str(split)]) == 0
    resume = [*common, "--epochs", "2", "--checkpoint-dir", str(split), "--resume"]
    assert cli.main(resume) == 0
    a = load_checkpoint(straight / "last.pt")
    b = load_checkpoint(split / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    meta = a["metadata"]
    assert meta["model"] == "supervised-sm" and meta["image_shape"] == [1, 8, 8]
    assert meta["num_classes"] == 10 and meta["dataset"] == os.path.abspath(small_npz)
    assert meta["settings"]["seed"] == 3 and meta["settings"]["epochs"] == 2


def test_resume_with_another_model_is_refused(tmp_path, small_npz, capsys):
    folder = tmp_path / "ckpt"
    argv = ["train", "--dataset", small_npz, "--epochs", "1", "--no-progress"]
    assert cli.main([*argv, "--checkpoint-dir", str(folder)]) == 0
    capsys.readouterr()
    resume = [*argv, "--model", "sm", "--checkpoint-dir", str(folder), "--resume"]
    assert cli.main(resume) == 2
    one_line_error(capsys.readouterr().err, "was trained with --model supervised-sm")


def test_resume_with_another_seed_is_refused_in_the_commands_words(
    tmp_path, small_npz, capsys
):
    folder = tmp_path / "ckpt"
    argv = ["train", "--dataset", small_npz, "--epochs", "1", "--no-progress"]
    assert cli.main([*argv, "--checkpoint-dir", str(folder)]) == 0
    before = (folder / "last.pt").read_bytes()
    capsys.readouterr()
    resume = [*argv, "--epochs", "2", "--seed", "1", "--resume"]
    assert cli.main([*resume, "--checkpoint-dir", str(folder)]) == 2
    one_line_error(capsys.readouterr().err, "trained with --seed 0 (now 1)")
    assert (folder / "last.pt").read_bytes() == before


def test_thread_count_is_scoped_to_the_run(small_npz, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    seen = []
    original = cli_train.fit

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(cli_train, "fit", spy)
    argv = ["train", "--dataset", small_npz, "--epochs", "1", "--no-progress"]
    assert cli.main(argv) == 0
    assert seen == [1]  # circuits train on one thread ...
    assert torch.get_num_threads() == 2  # ... and the caller gets its threads back
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(["train", "--epochs", "x"]) == 2
    assert signal.getsignal(signal.SIGTERM) is before


class _NaNTask(nn.Module):
    """A task whose loss is NaN from the first batch."""

    def __init__(self, channels: int, side: int, classes: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def training_loss(self, batch):
        return self.scale * float("nan")

    def embed(self, x):
        return self.scale * x.flatten(1)


def _with_recipe(monkeypatch, name, build):
    spec = cli.MODELS[name]
    fields = {k: getattr(spec, k) for k in spec.__dataclass_fields__}
    monkeypatch.setitem(cli.MODELS, name, cli.ModelSpec(**{**fields, "build": build}))


def test_divergence_is_one_line_exit_1(tmp_path, small_npz, capsys, monkeypatch):
    _with_recipe(monkeypatch, "sm", _NaNTask)
    folder = tmp_path / "ckpt"
    argv = ["train", "--model", "sm", "--dataset", small_npz, "--no-progress"]
    assert cli.main([*argv, "--checkpoint-dir", str(folder)]) == 1
    one_line_error(capsys.readouterr().err, "training diverged")
    assert not (folder / "last.pt").exists()  # no NaN weights saved


def test_full_disk_is_one_line(tmp_path, small_npz, capsys, monkeypatch):
    from pynsm.train import Trainer

    def full(self, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Trainer, "save_checkpoint", full)
    argv = ["train", "--dataset", small_npz, "--epochs", "1", "--no-progress"]
    assert cli.main([*argv, "--checkpoint-dir", str(tmp_path / "c")]) == 1
    one_line_error(capsys.readouterr().err, "No space left on device")


def test_ctrl_c_is_one_line_exit_130(small_npz, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_train, "fit", interrupted)
    argv = ["train", "--dataset", small_npz, "--no-progress"]
    assert cli.main(argv) == 130
    one_line_error(capsys.readouterr().err, "interrupted (Ctrl-C)")


def test_sigterm_stops_cleanly_with_143(tmp_path):
    images, labels = digits_arrays(100)
    data = tmp_path / "data.npz"
    np.savez(data, images=images, labels=labels)
    folder = tmp_path / "ckpt"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pynsm",
            "train",
            "--dataset",
            str(data),
            "--epochs",
            "100000",
            "--no-progress",
            "--checkpoint-dir",
            str(folder),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 120
        while not (folder / "last.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (folder / "last.pt").exists(), "no epoch finished in time"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    one_line_error(err, "interrupted (SIGTERM)")
    assert load_checkpoint(folder / "last.pt")["epoch"] >= 1
    assert not [p for p in os.listdir(folder) if p.endswith(".tmp")]


def test_ssl_model_and_circuit_prediction(tmp_path, small_npz, monkeypatch):
    report = tmp_path / "swav.json"
    argv = [
        "train",
        "--model",
        "swav",
        "--dataset",
        small_npz,
        "--epochs",
        "1",
        "--no-progress",
        "--json",
        str(report),
    ]
    assert cli.main(argv) == 0
    result = json.loads(report.read_text())
    assert 0.0 <= result["test_accuracy"] <= 1.0 and "circuit_accuracy" not in result

    # a circuit with its own predict() is scored on the test set
    build = cli.MODELS["supervised-sm"].build

    def with_predict(channels, side, classes):
        task = build(channels, side, classes)
        task.circuit.predict = lambda x: torch.zeros(len(x), dtype=torch.long)
        return task

    _with_recipe(monkeypatch, "supervised-sm", with_predict)
    argv = [
        "train",
        "--dataset",
        small_npz,
        "--epochs",
        "1",
        "--no-progress",
        "--json",
        str(report),
    ]
    assert cli.main(argv) == 0
    result = json.loads(report.read_text())
    # predicting class 0 everywhere is right exactly for the test images of 0s
    assert 0.0 < result["circuit_accuracy"] < 0.2
