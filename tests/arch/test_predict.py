"""`SupervisedSimilarityMatching.predict` / `decode_label`: the circuit classifies with
its own label pathway, `argmax L^T M^{-1} y(x)`."""

import pytest
import torch
from torch import nn

from pynsm.arch import SupervisedSimilarityMatching


def _clusters(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three zero-mean-overall Gaussian classes in 6 dimensions (scaled so that the
    eigenvalues of the learnt `M` stay below 2: the inner iteration converges)."""
    generator = torch.Generator().manual_seed(seed)
    centres = 0.7 * torch.tensor(
        [[1.0, 1.0, 0, 0, 0, 0], [-1.0, 0, 1.0, 0, 0, 0], [0, -1.0, -1.0, 0, 0, 0]]
    )
    labels = torch.arange(3).repeat_interleave(n_per_class)
    x = centres[labels] + 0.14 * torch.randn(len(labels), 6, generator=generator)
    return x, labels


def _circuit(**kwargs) -> SupervisedSimilarityMatching:
    torch.manual_seed(0)
    kwargs.setdefault("regularization", ("weight", "weight"))
    return SupervisedSimilarityMatching(
        nn.Linear(6, 4, bias=False),
        num_classes=3,
        out_channels=4,
        tau=0.5,
        max_iterations=50,
        **kwargs,
    )


def _train(circuit: SupervisedSimilarityMatching, epochs: int = 15) -> None:
    x, labels = _clusters(100, seed=0)
    onehot = nn.functional.one_hot(labels, 3).float()
    optimizer = torch.optim.SGD(circuit.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(1)
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(20):
            y = circuit(x[batch], onehot[batch])
            optimizer.zero_grad()
            circuit.loss(x[batch], onehot[batch], y).backward()
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@pytest.fixture(scope="module")
def trained() -> SupervisedSimilarityMatching:
    circuit = _circuit()
    _train(circuit)
    return circuit


def test_trained_circuit_predicts_held_out_clusters(trained):
    x, labels = _clusters(50, seed=7)
    assert (trained.predict(x) == labels).float().mean() >= 0.97


def test_untrained_circuit_does_not(trained):
    # the accuracy comes from learning, not from the decoding rule
    x, labels = _clusters(50, seed=7)
    assert (_circuit().predict(x) == labels).float().mean() < 0.8


def test_training_reaches_the_similarity_matching_optimum(trained):
    # at the optimum M = E[y y^T] and W = E[y z^T] for the joint input z = [x; l]
    x, labels = _clusters(100, seed=0)
    onehot = nn.functional.one_hot(labels, 3).float()
    with torch.no_grad():
        y = trained(x, onehot)
        gram = y.T @ y / len(y)
        joint_weight = torch.cat(
            [trained.encoders[0].weight, trained.encoders[1].weight], 1
        )
        correlation = y.T @ torch.cat([x, onehot], 1) / len(y)
    competitor = trained.competitor.weight.detach()
    assert torch.allclose(competitor, gram, atol=0.1 * gram.abs().max())
    assert torch.allclose(joint_weight, correlation, atol=0.1 * correlation.abs().max())


def test_decode_label_is_label_weight_times_inverse_competitor():
    circuit = _circuit()
    generator = torch.Generator().manual_seed(3)
    a = torch.randn(4, 4, generator=generator)
    with torch.no_grad():
        circuit.competitor.weight.copy_(a @ a.T + torch.eye(4))  # symmetric, > 0
    y = torch.randn(5, 4, generator=generator)
    expected = torch.linalg.solve(circuit.competitor.weight, y.T).T
    expected = expected @ circuit.encoders[1].weight
    torch.testing.assert_close(circuit.decode_label(y), expected.detach())


def test_decode_label_averages_spatial_outputs():
    torch.manual_seed(0)
    circuit = SupervisedSimilarityMatching(
        nn.Conv2d(1, 4, 3, bias=False), num_classes=3, out_channels=4
    )
    y = torch.rand(2, 4, 5, 5)
    torch.testing.assert_close(
        circuit.decode_label(y), circuit.decode_label(y.mean((2, 3)))
    )
    assert circuit.predict(torch.rand(2, 1, 7, 7)).shape == (2,)


def test_label_pathway_decodes_its_own_label(trained):
    # the output the label alone drives is decoded back to that label
    onehot = torch.eye(3)
    assert trained.decode_label(trained(None, onehot)).argmax(1).tolist() == [0, 1, 2]


def test_clamped_outputs_decode_to_their_labels(trained):
    x, labels = _clusters(30, seed=5)
    onehot = nn.functional.one_hot(labels, 3).float()
    decoded = trained.decode_label(trained(x, onehot)).argmax(1)
    assert torch.equal(decoded, labels)


def test_predict_needs_no_labels_and_matches_decode(trained):
    x, _ = _clusters(10, seed=2)
    predicted = trained.predict(x)
    assert predicted.dtype == torch.int64 and predicted.shape == (30,)
    assert torch.equal(predicted, trained.decode_label(trained(x)).argmax(1))


def test_predict_changes_nothing_on_the_module(trained):
    x, _ = _clusters(10, seed=2)
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    flags = {n: p.requires_grad for n, p in trained.named_parameters()}
    mode = trained.training
    with torch.enable_grad():
        predicted = trained.predict(x)
        scores = trained.decode_label(trained(x))
    assert predicted.grad_fn is None and scores.grad_fn is None
    assert not scores.requires_grad
    assert trained.training == mode
    assert {n: p.requires_grad for n, p in trained.named_parameters()} == flags
    assert all(p.grad is None for p in trained.parameters())
    for key, value in trained.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_bad_inputs():
    circuit = _circuit()
    with pytest.raises(TypeError, match="x must be a Tensor"):
        circuit.predict([[0.0] * 6])
    with pytest.raises(TypeError, match="y must be a Tensor"):
        circuit.decode_label("y")
    with pytest.raises(ValueError, match="out_channels=4"):
        circuit.decode_label(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="out_channels=4"):
        circuit.decode_label(torch.zeros(4))
    conv = SupervisedSimilarityMatching(
        nn.Conv2d(1, 4, 3), num_classes=3, out_channels=4
    )
    with pytest.raises(ValueError, match="smaller than"):
        conv.predict(torch.zeros(2, 1, 2, 2))


@pytest.mark.parametrize("projection", [torch.relu, nn.ReLU()])
def test_predict_refuses_a_circuit_with_a_projection(projection):
    # pynsm 1.0.1's supervised demo is a ReLU circuit: L^T M^{-1} y is no label
    # reconstruction there (it answered one class for every MNIST image)
    circuit = SupervisedSimilarityMatching(
        nn.Conv2d(1, 4, 3), 3, 4, label_bias=False, iteration_projection=projection
    )
    before = {k: v.clone() for k, v in circuit.state_dict().items()}
    with pytest.raises(ValueError, match="linear readout") as info:
        circuit.predict(torch.rand(2, 1, 6, 6))
    assert "iteration_projection" in str(info.value)
    assert "relu" in str(info.value).lower()
    for key, value in circuit.state_dict().items():
        assert torch.equal(value, before[key]), key
