"""Execute every example notebook top to bottom, as a reader would.

Each notebook runs in a fresh ``python3`` kernel (the interpreter running pytest) with
the checkout first on ``PYTHONPATH``, offline. A notebook passes when no cell raises
and it draws at least one figure. Set ``PYNSM_WRITE_NOTEBOOKS=1`` to write the
executed outputs back into ``docs/examples/`` (how the committed figures that the
documentation site shows are refreshed).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))


def test_there_are_at_least_six_notebooks() -> None:
    assert len(NOTEBOOKS) >= 6, [path.name for path in NOTEBOOKS]


def _figures(notebook) -> int:
    return sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path: Path, monkeypatch) -> None:
    # the kernel inherits this environment: import this checkout, draw off-screen
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = nbclient.NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=600,
        resources={"metadata": {"path": str(EXAMPLES)}},
    )
    client.execute()  # raises CellExecutionError naming the failing cell

    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]
    assert not errors
    assert _figures(notebook) >= 1, f"{path.name} draws no figure"
    if os.environ.get("PYNSM_WRITE_NOTEBOOKS") == "1":
        nbformat.write(notebook, path)
