"""The Python code of the documentation pages runs as written.

The fenced ``python`` blocks of a page are concatenated in order and executed in one
namespace (pages build on their earlier blocks), offline and on small inputs; pages
that train on the digits run on 192 of them for one epoch. Blocks
that only show a method to paste into an earlier class (indented ``def``) are checked
by compiling them inside a class body.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _blocks(page: str) -> list[str]:
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    return [textwrap.dedent(block) for block in BLOCK.findall(text)]


def _run(page: str) -> dict:
    namespace: dict = {}
    for block in _blocks(page):
        if (
            block.startswith("    def ")
            or block.lstrip().startswith("def ")
            and (block.startswith(" "))
        ):
            compile("class _Snippet:\n" + block, page, "exec")
            continue
        exec(compile(block, page, "exec"), namespace)  # noqa: S102
    return namespace


def test_custom_circuit_page_runs_and_its_circuit_solves_its_problem() -> None:
    ns = _run("howto/custom-circuit.md")
    circuit, x = ns["circuit"], ns["x"]
    circuit.max_iterations = 3000  # run the projected gradient to convergence
    y = circuit(x)
    # KKT conditions of min_{y >= 0} ½‖x − D y‖² + λ Σ y
    weight = circuit.dictionary.weight.detach()
    grad = (y @ weight.T - x) @ weight + circuit.sparsity
    assert y.min() >= 0
    # (projected gradient descent converges linearly but slowly: loose tolerances,
    # against a violation of about 0.6 at the page's 100 iterations)
    assert grad.min() > -1e-2
    assert (y * grad).abs().max() < 1e-2
    assert len(ns["trace"]) == 20  # the hook of the page stopped that iteration
    # the manual gradient of the page equals autograd of the iteration loss
    methods = _blocks("howto/custom-circuit.md")
    manual = next(block for block in methods if "iteration_set_gradients" in block)
    local: dict = {"torch": torch}
    exec(compile(manual, "manual", "exec"), local)  # noqa: S102
    circuit.y = torch.rand(x.shape[0], 32, requires_grad=True)
    loss = circuit.iteration_loss(x)
    (expected,) = torch.autograd.grad(loss, circuit.y)
    local["iteration_set_gradients"](circuit, x)
    torch.testing.assert_close(circuit.y.grad, expected)


def test_custom_prior_page_runs_and_its_priors_are_distributions() -> None:
    ns = _run("howto/custom-prior.md")
    mean = torch.softmax(torch.randn(16), dim=0)
    for name in ("geometric_prior", "sorted_power_law"):
        prior = ns[name](mean)
        assert prior.shape == mean.shape
        assert prior.min() > 0
        torch.testing.assert_close(prior.sum(), torch.tensor(1.0))
    # the sorted power law gives the largest share to the most used prototype
    assert ns["sorted_power_law"](mean).argmax() == mean.argmax()
    anchors, targets = torch.randn(8, 10), torch.randn(4, 10)
    prototypes = torch.randn(16, 10)
    loss = ns["criterion"](anchors, targets, prototypes)
    assert torch.isfinite(loss)


def test_index_page_first_circuit_runs_and_learns() -> None:
    ns = _run("index.md")
    circuit, y = ns["circuit"], ns["y"]
    assert y.shape == (64, 3)
    assert torch.isfinite(ns["loss"])
    # one SGD step moved the lateral weights off their identity initialisation
    assert not torch.equal(circuit.competitor.weight, torch.eye(3))


def test_installation_page_imports_are_the_1_0_1_paths() -> None:
    import pynsm.eval

    ns = _run("installation.md")
    assert ns["extract_embeddings"] is pynsm.eval.extract_embeddings
    assert ns["SimilarityMatching"].__module__ == "pynsm.arch.similarity"


@pytest.fixture
def few_digits(monkeypatch: pytest.MonkeyPatch):
    """``load_digits`` on a few images, and every ``Trainer`` for one epoch."""
    from torch.utils.data import Subset

    import pynsm.data
    import pynsm.train

    load = pynsm.data.load_digits

    def small(*args, **kwargs):
        train, test = load(*args, **kwargs)
        return Subset(train, range(192)), Subset(test, range(96))

    trainer = pynsm.train.Trainer

    def one_epoch(*args, **kwargs):
        kwargs.update(epochs=1, progress=False)
        return trainer(*args, **kwargs)

    monkeypatch.setattr(pynsm.data, "load_digits", small)
    monkeypatch.setattr(pynsm.train, "Trainer", one_epoch)


@pytest.mark.parametrize("page", ["quickstart.md", "howto/classifier.md"])
def test_training_pages_run_on_a_few_digits(page: str, few_digits) -> None:
    # the pages' own code (imports, constructors, calls), on 192 images, one epoch
    ns = _run(page)
    accuracy = ns.get("accuracy")
    if accuracy is None:  # the quick start prints it
        tr, te = ns["tr"], ns["te"]
        accuracy = ns["linear_probe_accuracy"](
            tr.output, tr.label, te.output, te.label, C=0.1
        )
    assert 0.0 <= accuracy <= 1.0


def test_the_long_tail_snippet_prints_what_the_data_guide_says(capsys) -> None:
    (block,) = [b for b in _blocks("guide/data.md") if "long_tailed_indices" in b]
    exec(compile(block, "guide/data.md", "exec"), {})  # noqa: S102
    printed = capsys.readouterr().out.strip()
    assert f"# {printed}" in block


def test_the_mnist_page_builds_its_longer_recipe() -> None:
    ns = _run("mnist.md")
    assert ns["model"].view_size == 28 and ns["trainer"].epochs == 100
