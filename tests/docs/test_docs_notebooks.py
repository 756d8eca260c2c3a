"""Execute every example notebook top to bottom, as a reader would.

Each notebook runs in a fresh ``python3`` kernel (the interpreter running pytest) with
the checkout first on ``PYTHONPATH``, offline. A notebook passes when no cell raises,
it draws at least one figure, and its outputs are fit to publish: nothing written to
stderr, no warning, no path of the machine that ran it. Set
``PYNSM_WRITE_NOTEBOOKS=1`` to write the executed outputs back into ``docs/examples/``
(how the committed figures that the documentation site shows are refreshed); the
committed outputs are checked by the same rules without running anything.
"""

from __future__ import annotations

import os
import re
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


# what a reader of the site must never see in an output
MACHINE_PATH = re.compile(
    r"/work/|/root/|/home/|/Users/|/tmp/|site-packages|dist-packages|\b[A-Z]:\\"
)
WARNING = re.compile(r"\w*Warning\b")
TEXT_TYPES = ("text/plain", "text/html", "text/markdown", "text/latex")


def _texts(output) -> list[str]:
    """The human-readable text of one output (images are not searched)."""

    def joined(value) -> str:
        return "".join(value) if isinstance(value, list) else str(value)

    texts = [joined(output.get("text", ""))]
    texts += [joined(output.get("data", {}).get(kind, "")) for kind in TEXT_TYPES]
    texts += [joined(output.get("traceback", ""))]
    return [text for text in texts if text]


def unclean_outputs(notebook) -> list[str]:
    """One line per output that must not be published, naming cell and reason."""
    found = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        for output in cell.get("outputs", []):
            where = f"cell {index}"
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                found.append(f"{where}: stderr output {_texts(output)[0][:120]!r}")
                continue
            for text in _texts(output):
                for pattern, reason in (
                    (WARNING, "a warning"),
                    (MACHINE_PATH, "a path"),
                ):
                    match = pattern.search(text)
                    if match:
                        line = text[max(0, match.start() - 60) : match.end() + 60]
                        found.append(f"{where}: {reason} in an output: {line!r}")
    return found


def test_the_output_check_catches_what_it_must() -> None:
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="accuracy: 0.97\n"),
        nbformat.v4.new_output("execute_result", data={"text/plain": "tensor(1.)"}),
    ]
    notebook = nbformat.v4.new_notebook(cells=[cell])
    assert unclean_outputs(notebook) == []
    for bad in (
        nbformat.v4.new_output("stream", name="stderr", text="anything\n"),
        nbformat.v4.new_output(
            "stream", name="stdout", text="x.py:3: UserWarning: careful\n"
        ),
        nbformat.v4.new_output(
            "display_data", data={"text/plain": "/opt/venv/lib/site-packages/m.py"}
        ),
        nbformat.v4.new_output("stream", name="stdout", text="saved /root/run.pt\n"),
        nbformat.v4.new_output("stream", name="stdout", text="in C:\\Users\\me\n"),
    ):
        cell.outputs = [bad]
        assert len(unclean_outputs(notebook)) == 1, bad


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_outputs_are_fit_to_publish(path: Path) -> None:
    # the outputs the site shows, as committed: no execution needed
    problems = unclean_outputs(nbformat.read(path, as_version=4))
    assert not problems, "\n".join(problems)


def test_there_are_at_least_six_notebooks() -> None:
    assert len(NOTEBOOKS) >= 6, [path.name for path in NOTEBOOKS]


def _figures(notebook) -> int:
    return sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )


#: Real MNIST as tests/fetch_mnist.sh writes it (the MNIST notebooks read it).
DATA = Path(os.environ.get("PYNSM_TEST_DATA", ROOT / ".data"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path: Path, monkeypatch) -> None:
    if "mnist" in path.stem and not (DATA / "MNIST" / "raw").is_dir():
        pytest.skip(f"real MNIST is not in {DATA} (bash tests/fetch_mnist.sh)")
    # the kernel inherits this environment: import this checkout, draw off-screen,
    # read datasets from the fetched folder (never the network)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    monkeypatch.setenv("PYNSM_DATA", str(DATA))
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
    problems = unclean_outputs(notebook)  # checked before anything is written back
    assert not problems, "\n".join(problems)
    if os.environ.get("PYNSM_WRITE_NOTEBOOKS") == "1":
        nbformat.write(notebook, path)
