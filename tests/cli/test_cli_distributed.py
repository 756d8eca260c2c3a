"""``pynsm train`` under ``torchrun``: two processes, one report."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
from _cli_helpers import ROOT, subprocess_env

pytest.importorskip("sklearn")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
        # a crash in C++ (SIGABRT) prints every thread's Python stack
        env={**subprocess_env(), "PYTHONFAULTHANDLER": "1"},
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-8000:]
    assert proc.stdout.count("pynsm train:") == 1  # rank 0 only
    result = json.loads(report.read_text())
    assert result["world_size"] == 2 and len(result["history"]) == 2
    assert all("knn_accuracy" in entry for entry in result["history"])
    assert 0.5 <= result["test_accuracy"] <= 1.0
