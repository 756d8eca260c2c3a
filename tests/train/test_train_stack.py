"""CircuitStack: circuits in series, each learning by its own local objective."""

import pytest
import torch
from torch import nn

from pynsm.arch import SimilarityMatching, SupervisedSimilarityMatching
from pynsm.train import CircuitStack, CircuitTask, Trainer


def _pool(y: torch.Tensor) -> torch.Tensor:
    return nn.functional.avg_pool2d(y, 2).flatten(1)


def _stack() -> CircuitStack:
    torch.manual_seed(0)
    bottom = SimilarityMatching(
        nn.Conv2d(1, 4, 3, bias=False), 4, iteration_projection=torch.relu
    )
    head = SupervisedSimilarityMatching(
        nn.Linear(36, 5, bias=False), 3, 5, regularization=("weight", "weight")
    )
    return CircuitStack(
        CircuitTask(bottom, feature_pool=_pool), CircuitTask(head, num_classes=3)
    )


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(6, 1, 8, 8, generator=generator), torch.tensor([0, 1, 2] * 2)


def test_loss_is_the_sum_of_each_layers_loss_at_its_fixed_point():
    stack = _stack()
    x, labels = _batch()
    bottom, head = (layer.circuit for layer in stack.layers)
    y1 = bottom(x)
    h = _pool(y1)
    onehot = nn.functional.one_hot(labels, 3).float()
    y2 = head(h, onehot)
    expected = bottom.loss(x, y1) + head.loss(h, onehot, y2)
    torch.testing.assert_close(stack.training_loss((x, labels)), expected)


def test_no_gradient_crosses_a_layer():
    # the bottom layer's weights get exactly the gradient of its own loss
    stack = _stack()
    x, labels = _batch()
    bottom = stack.layers[0].circuit
    bottom.loss(x, bottom(x)).backward()
    alone = [p.grad.clone() for p in bottom.parameters()]
    stack.zero_grad()
    stack.training_loss((x, labels)).backward()
    for own, together in zip(alone, (p.grad for p in bottom.parameters())):
        torch.testing.assert_close(together, own)
    head = stack.layers[1].circuit
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


def test_embed_and_predict_read_the_top_circuit_on_the_pooled_features():
    stack = _stack()
    x, _ = _batch()
    h = _pool(stack.layers[0].circuit(x))
    torch.testing.assert_close(stack.features(x), h)
    torch.testing.assert_close(stack.embed(x), stack.layers[1].circuit(h))
    assert torch.equal(stack.predict(x), stack.layers[1].circuit.predict(h))
    assert stack.circuit is stack.layers[1].circuit


def test_residual_is_the_largest_of_the_layers():
    stack = _stack()
    stack.training_loss(_batch())
    residuals = [layer.step_metrics()["residual"] for layer in stack.layers]
    assert stack.step_metrics()["residual"] == max(residuals)


def test_bad_layers_are_refused():
    stack = _stack()
    bottom, top = stack.layers
    with pytest.raises(ValueError, match="two or more"):
        CircuitStack(bottom)
    with pytest.raises(TypeError, match=r"layers\[1\] must be a CircuitTask"):
        CircuitStack(bottom, nn.Linear(2, 2))
    with pytest.raises(ValueError, match="only the last layer may see labels"):
        CircuitStack(top, bottom)
    unsupervised_top = CircuitStack(
        bottom, CircuitTask(SimilarityMatching(nn.Linear(36, 5), 5))
    )
    with pytest.raises(TypeError, match="has no predict"):
        unsupervised_top.predict(_batch()[0])


def test_the_trainer_trains_a_stack_and_both_layers_move():
    stack = _stack()
    x, labels = _batch()
    data = torch.utils.data.TensorDataset(x.repeat(4, 1, 1, 1), labels.repeat(4))
    before = {k: v.clone() for k, v in stack.state_dict().items()}
    trainer = Trainer(stack, lr=0.01, epochs=2, batch_size=6, progress=False)
    history = trainer.fit(data)
    assert torch.isfinite(torch.tensor(history[-1]["loss"]))
    moved = {k for k, v in stack.state_dict().items() if not torch.equal(v, before[k])}
    assert {
        "layers.0.circuit.competitor.weight",
        "layers.1.circuit.competitor.weight",
    } <= moved
