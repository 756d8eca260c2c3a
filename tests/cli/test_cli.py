"""The ``pynsm train`` command: bad input, JSON report, exact resume, torchrun."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from pynsm import cli
from pynsm.train import load_checkpoint

pytest.importorskip("sklearn")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny models: one thread is faster and immune to oversubscribed CI machines
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory):
    """300 digits (8×8, uint8 0..255) as a .npz dataset."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    path = tmp_path_factory.mktemp("data") / "small.npz"
    images = (digits.images[:300] * 255 / 16).round().astype(np.uint8)
    np.savez(path, images=images, labels=digits.target[:300])
    return str(path)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["train", "--model", "nope"], "invalid choice"),
        (["train", "--epochs", "-1"], "--epochs must be >= 0"),
        (["train", "--batch-size", "0"], "--batch-size must be > 0"),
        (["train", "--epochs", "two"], "--epochs must be an integer"),
        (["train", "--lr", "fast"], "--lr must be a number"),
        (["train", "--lr", "nan"], "--lr must be > 0"),
        (["train", "--dataset", "missing.npz"], "does not exist"),
        (["train", "--dataset", "mnist"], "must be 'digits' or a .npz"),
        (["train", "--resume"], "--resume needs --checkpoint-dir"),
        (["train", "--device", "tpu:0"], "--device"),
        (["train", "--unknown"], "unrecognized arguments"),
        ([], "required"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, match, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pynsm: error: ")
    assert match in err and "Traceback" not in err


def test_malformed_dataset_and_nothing_to_resume(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((4, 3, 3)), labels=np.zeros(3, int))
    assert cli.main(["train", "--dataset", str(bad)]) == 2
    assert "one per image" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["train", "--checkpoint-dir", str(empty), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "nothing to resume" in err and err.count("\n") == 1
    (empty / "last.pt").write_bytes(b"garbage")
    assert cli.main(["train", "--checkpoint-dir", str(empty), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "not a readable checkpoint" in err and err.count("\n") == 1


def test_json_report_and_exact_resume(tmp_path, small_npz, capsys):
    common = ["train", "--dataset", small_npz, "--no-progress", "--seed", "3"]
    straight = tmp_path / "straight"
    report = tmp_path / "report.json"
    assert (
        cli.main(
            [
                *common,
                "--epochs",
                "2",
                "--checkpoint-dir",
                str(straight),
                "--json",
                str(report),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "test accuracy" in out
    result = json.loads(report.read_text())
    assert result["model"] == "supervised-sm" and result["world_size"] == 1
    assert 0.8 <= result["test_accuracy"] <= 1.0
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    assert all(isinstance(h["loss"], float) for h in result["history"])
    assert result["train_seconds"] > 0
    assert 0.0 <= result["random_init_accuracy"] <= 1.0

    split = tmp_path / "split"
    assert cli.main([*common, "--epochs", "1", "--checkpoint-dir", str(split)]) == 0
    assert (
        cli.main([*common, "--epochs", "2", "--checkpoint-dir", str(split), "--resume"])
        == 0
    )
    a = load_checkpoint(straight / "last.pt")
    b = load_checkpoint(split / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    raw = torch.load(split / "last.pt", weights_only=True)
    assert {"model", "optimizer", "epoch", "rng"} <= set(raw)


class _SwaVLossStandIn(torch.nn.Module):
    """Swapped prediction with softmax codes (used until pynsm.losses.swav exists)."""

    def forward(self, high, low, queue=None):
        views = list(high) + list(low)
        loss = 0.0
        for i, scores in enumerate(high):
            codes = (scores.detach() / 0.05).softmax(dim=1)
            for j, other in enumerate(views):
                if j != i:
                    log_p = (other / 0.1).log_softmax(dim=1)
                    loss = loss - (codes * log_p).sum(1).mean()
        return loss / (len(high) * (len(views) - 1))


def _swav_criterion():
    try:
        from pynsm.losses.swav import SwaVLoss
    except ImportError:
        return _SwaVLossStandIn()
    return SwaVLoss()


def test_ssl_model_reports_random_init_accuracy(tmp_path, small_npz, monkeypatch):
    from pynsm.ssl.swav import SwaV

    spec = cli.MODELS["swav"]

    def build(channels, side, classes):
        return SwaV(in_channels=channels, image_size=side, criterion=_swav_criterion())

    monkeypatch.setitem(
        cli.MODELS, "swav", cli.ModelSpec(build, *list(vars(spec).values())[1:])
    )
    report = tmp_path / "swav.json"
    argv = [
        "train",
        "--model",
        "swav",
        "--dataset",
        small_npz,
        "--epochs",
        "2",
        "--no-progress",
        "--json",
        str(report),
    ]
    assert cli.main(argv) == 0
    result = json.loads(report.read_text())
    assert 0.0 <= result["random_init_accuracy"] <= 1.0
    assert 0.0 <= result["test_accuracy"] <= 1.0 and len(result["history"]) == 2


def test_python_dash_m_bad_input_has_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "pynsm", "train", "--batch-size", "x"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr


def test_torchrun_two_processes_one_report(tmp_path, small_npz):
    report = tmp_path / "dist.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            f"--master_port={_free_port()}",
            "-m",
            "pynsm",
            "train",
            "--dataset",
            small_npz,
            "--epochs",
            "2",
            "--no-progress",
            "--json",
            str(report),
        ],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("test accuracy") == 1  # rank 0 only
    result = json.loads(report.read_text())
    assert result["world_size"] == 2 and len(result["history"]) == 2
    assert 0.5 <= result["test_accuracy"] <= 1.0
