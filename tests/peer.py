"""Run code under pynsm 1.0.1 (the peer) to compare against this package.

pynsm 1.0.1 has the same import name, so it runs in a subprocess whose `PYTHONPATH`
starts with its unpacked folder (`tests/fetch_peer.sh` puts it in `.peer/`). Tensors,
state dicts and numbers travel through `torch.save` files.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

PEER_DIR = Path(__file__).resolve().parents[1] / ".peer" / "pynsm-1.0.1"

requires_peer = pytest.mark.skipif(
    not (PEER_DIR / "pynsm").is_dir(),
    reason="pynsm 1.0.1 not unpacked in .peer/ (run tests/fetch_peer.sh)",
)

_DRIVER = """\
import sys
import torch
torch.set_num_threads({threads})
inputs = torch.load(sys.argv[1], weights_only=False)
outputs = {{}}
{script}
torch.save(outputs, sys.argv[2])
"""


def _peer_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PEER_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    return env


def start_peer(script: str, threads: int = 1) -> subprocess.Popen:
    """Start `script` under pynsm 1.0.1 as a long-running process.

    The process talks through text pipes (`stdin`/`stdout`, line by line), e.g. to
    interleave timings with the calling process. The caller closes it.
    """
    source = f"import torch\ntorch.set_num_threads({threads})\n"
    source += textwrap.dedent(script)
    return subprocess.Popen(
        [sys.executable, "-c", source],
        cwd=tempfile.mkdtemp(prefix="pynsm-peer-"),
        env=_peer_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def run_peer(
    script: str, inputs: dict[str, Any] | None = None, threads: int = 1, timeout=300
) -> dict[str, Any]:
    """Run `script` with pynsm 1.0.1 importable as `pynsm`; return its `outputs`.

    Args:
        script: Python code; it finds the dict `inputs` defined and fills the dict
            `outputs` with tensors, state dicts and numbers to send back.
        inputs: objects to send (anything `torch.save` can write).
        threads: `torch.set_num_threads` in the subprocess.
        timeout: seconds before the subprocess is killed.

    Returns:
        The `outputs` dict of the script.
    """
    driver = _DRIVER.format(threads=threads, script=textwrap.dedent(script))
    env = _peer_env()
    with tempfile.TemporaryDirectory() as tmp:
        in_path, out_path = Path(tmp, "inputs.pt"), Path(tmp, "outputs.pt")
        torch.save(inputs or {}, in_path)
        # cwd=tmp so that the checkout's own `pynsm` is not found first
        proc = subprocess.run(
            [sys.executable, "-c", driver, str(in_path), str(out_path)],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"peer script failed:\n{proc.stderr}")
        return torch.load(out_path, weights_only=False)
