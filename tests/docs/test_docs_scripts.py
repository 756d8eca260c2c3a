"""Smoke tests of the example scripts in ``docs/examples/scripts``, tiny settings.

Every script is run in-process through its ``main(argv)`` (one torch import for all),
on a few digits for one or two optimizer steps; it must train, evaluate, and return a
kNN accuracy in [0, 1]. One distributed script also runs under ``torchrun`` with two
gloo processes.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "docs" / "examples" / "scripts"
METHODS = ["msn", "pmsn", "swav", "swav_queue"]
TINY = {
    "pytorch": ["--epochs", "1", "--max-steps", "2", "--batch-size", "16"],
    "lightning": ["--epochs", "1", "--max-steps", "2", "--batch-size", "16"],
    "distributed": ["--epochs", "1", "--subset", "32", "--batch-size", "16"],
}
QUEUE = ["--queue-length", "32", "--start-queue-at-epoch", "0"]


def _load(form: str, method: str):
    path = SCRIPTS / form / f"{method}.py"
    spec = importlib.util.spec_from_file_location(f"example_{form}_{method}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_method_has_the_three_forms() -> None:
    for form in TINY:
        found = sorted(path.stem for path in (SCRIPTS / form).glob("*.py"))
        assert found == sorted(METHODS), (form, found)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("form", list(TINY))
def test_script_trains_and_evaluates(form: str, method: str, monkeypatch) -> None:
    if form == "lightning":
        pytest.importorskip("lightning")
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)  # one process, no process group
    argv = TINY[form] + (QUEUE if method == "swav_queue" else [])
    accuracy = _load(form, method).main(argv)
    assert isinstance(accuracy, float)
    assert 0.0 <= accuracy <= 1.0


def test_distributed_script_under_torchrun(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    script = SCRIPTS / "distributed" / "swav_queue.py"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc_per_node", "2", str(script),
        *TINY["distributed"], *QUEUE,
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # rank 0 alone reports
    assert result.stdout.count("kNN accuracy on the test set") == 1, result.stdout
