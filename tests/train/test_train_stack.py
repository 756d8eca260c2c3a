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


# ---------------------------------------------------------- greedy layer-wise
def _whitened_stack(**kwargs) -> CircuitStack:
    from pynsm.arch import RunningWhitening

    torch.manual_seed(0)
    bottom = SimilarityMatching(
        nn.Conv2d(1, 4, 3, bias=False), 4, iteration_projection=torch.relu
    )
    head = SupervisedSimilarityMatching(
        nn.Linear(36, 5, bias=False), 3, 5, regularization=("weight", "weight")
    )
    pool = nn.Sequential(
        nn.AvgPool2d(2), nn.Flatten(), RunningWhitening(36, update_every=1, warmup=0)
    )
    return CircuitStack(
        CircuitTask(bottom, feature_pool=pool),
        CircuitTask(head, num_classes=3),
        **kwargs,
    )


def _grads(stack: CircuitStack) -> list[bool]:
    """Whether each layer's parameters got a gradient."""
    return [
        any(p.grad is not None for p in layer.circuit.parameters())
        for layer in stack.layers
    ]


def test_layerwise_only_the_learning_layer_gets_gradients():
    stack = _whitened_stack(layerwise=(2,))
    batch = _batch()
    stack.on_epoch_start(0, 4)
    stack.training_loss(batch).backward()
    assert _grads(stack) == [True, False]
    assert stack.layers[0].feature_pool[2].num_batches_tracked == 0  # not run
    stack.zero_grad(set_to_none=True)
    stack.on_epoch_start(2, 4)
    loss = stack.training_loss(batch)
    loss.backward()
    assert _grads(stack) == [False, True]
    # the loss is the head's alone, at its fixed point on the pooled bottom output
    x, labels = batch
    bottom, head = (layer.circuit for layer in stack.layers)
    h = stack.layers[0].feature_pool.eval()(bottom(x))
    onehot = nn.functional.one_hot(labels, 3).float()
    torch.testing.assert_close(loss, head.loss(h, onehot, head(h, onehot)))
    assert set(stack.step_metrics()) == {"residual"}


def test_layerwise_resets_the_pool_statistics_when_the_next_layer_starts():
    stack = _whitened_stack(layerwise=(1,))
    white = stack.layers[0].feature_pool[2]
    batch = _batch()
    stack.on_epoch_start(0, 3)
    stack.training_loss(batch)
    stack.on_epoch_start(1, 3)  # the head's first epoch: estimates start afresh
    assert white.num_batches_tracked == 0
    assert torch.equal(white.whitening, torch.eye(36))
    stack.training_loss(batch)
    stack.training_loss(batch)
    stack.on_epoch_start(2, 3)  # later epochs (or a resume there) keep them
    assert white.num_batches_tracked == 2


def test_layerwise_is_checked():
    stack = _stack()
    bottom, top = stack.layers
    with pytest.raises(ValueError, match=r"one entry per layer but the last \(1\)"):
        CircuitStack(bottom, top, layerwise=(1, 1))
    with pytest.raises(ValueError, match=r"layerwise\[0\] must be >= 1"):
        CircuitStack(bottom, top, layerwise=(0,))
    with pytest.raises(TypeError, match=r"layerwise\[0\] must be an int"):
        CircuitStack(bottom, top, layerwise=(1.5,))
    with pytest.raises(TypeError, match="layerwise must be a sequence"):
        CircuitStack(bottom, top, layerwise=2)
    phased = CircuitStack(bottom, top, layerwise=(2,))
    with pytest.raises(ValueError, match="num_epochs must be more than that, got 2"):
        phased.on_epoch_start(0, 2)


def test_the_trainer_trains_the_layers_one_after_the_other():
    stack = _whitened_stack(layerwise=(1,))
    x, labels = _batch()
    data = torch.utils.data.TensorDataset(x.repeat(4, 1, 1, 1), labels.repeat(4))
    names = ("layers.0.circuit.competitor.weight", "layers.1.circuit.competitor.weight")
    snapshots = [[stack.state_dict()[name].clone() for name in names]]

    def snapshot(task):
        snapshots.append([task.state_dict()[name].clone() for name in names])
        return {}

    trainer = Trainer(
        stack, lr=0.01, epochs=3, batch_size=6, progress=False, epoch_metrics=snapshot
    )
    trainer.fit(data)
    moved = [
        [not torch.equal(after, before) for before, after in zip(old, new)]
        for old, new in zip(snapshots, snapshots[1:])
    ]
    assert moved == [[True, False], [False, True], [False, True]]
