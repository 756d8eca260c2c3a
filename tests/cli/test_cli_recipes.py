"""Recipes chosen by what the data is: small (digits-sized) and large (MNIST-sized)."""

import pytest
import torch
from torch import nn

from pynsm.cli.recipes import LARGE_MODELS, LAYERWISE_EPOCHS, MODELS, select_recipe
from pynsm.train import CircuitStack, CircuitTask


@pytest.mark.parametrize("model", sorted(MODELS))
def test_the_recipe_follows_the_image_size(model):
    assert select_recipe(model, 8, 8) == ("small", MODELS[model])
    name, spec = select_recipe(model, 28, 28)
    assert name == "large"
    assert spec is LARGE_MODELS.get(model, MODELS[model])
    assert select_recipe(model, 32, 20)[0] == "large"


def test_an_unknown_model_is_refused():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        select_recipe("nope", 28, 28)


@pytest.mark.parametrize("model", sorted(LARGE_MODELS))
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_large_recipes_build_train_and_embed(model, shape):
    torch.manual_seed(0)
    spec = LARGE_MODELS[model]
    task = spec.build(shape[0], shape[1], 10)
    x = torch.rand(4, *shape)
    labels = torch.tensor([0, 1, 2, 3])
    loss = task.training_loss((x, labels))
    loss.backward()
    assert torch.isfinite(loss)
    task.eval()
    features = task.embed(x)
    assert features.shape[0] == 4 and torch.isfinite(features).all()


def test_the_untrained_stroke_detectors_stop_at_the_first_check():
    # at random init M = I, so y = relu(W x) after one step and the solver stops
    # at its first residual check: the random-init readouts cost almost nothing
    task = LARGE_MODELS["sm"].build(1, 28, 10)
    assert isinstance(task, CircuitStack)
    x = torch.rand(3, 1, 28, 28)
    for layer in task.layers:
        assert isinstance(layer, CircuitTask)
        circuit = layer.circuit
        y = circuit(x)
        with torch.no_grad():
            torch.testing.assert_close(y, torch.relu(circuit.encoders[0](x)))
        assert circuit.iteration_idx <= 4  # of max_iterations = 40
        x = layer.pool(y)


def test_large_sm_is_two_stacked_circuits_read_by_max_pools():
    task = LARGE_MODELS["sm"].build(1, 28, 10)
    x = torch.rand(2, 1, 28, 28)
    strokes, parts = task.layers
    pooled = strokes.pool(strokes.circuit(x))
    assert pooled.shape == (2, 50, 12, 12)  # 23x23 max-pooled 2x2 (ceil)
    assert task.embed(x).shape == (2, 100 * 4 * 4)  # 9x9 max-pooled 3x3 every 2
    # the smallest image the recipe takes
    assert task.embed(torch.rand(1, 1, 16, 16)).shape == (1, 100)
    assert LARGE_MODELS["sm"].min_image_size == 16


def test_local_centring_removes_the_local_mean():
    task = LARGE_MODELS["sm"].build(1, 28, 10)
    centring = task.layers[0].circuit.encoders[0][0]
    constant = torch.full((1, 1, 28, 28), 0.7)
    torch.testing.assert_close(centring(constant), torch.zeros_like(constant))
    x = torch.rand(2, 1, 28, 28)
    # a linear map: scaling the image scales the output
    torch.testing.assert_close(centring(2 * x), 2 * centring(x))


def test_supervised_large_recipe_is_a_stack_with_a_linear_readout():
    task = LARGE_MODELS["supervised-sm"].build(1, 28, 10)
    assert isinstance(task, CircuitStack)
    assert task.circuit.iteration_projection is None  # predict() applies
    task.eval()
    assert task.predict(torch.rand(3, 1, 28, 28)).shape == (3,)


def test_a_non_square_dataset_is_refused_by_the_stack_and_served_to_sm(
    tmp_path, capsys
):
    import numpy as np
    from _cli_helpers import one_line_error

    from pynsm import cli

    rng = np.random.default_rng(0)
    path = str(tmp_path / "wide.npz")
    np.savez(
        path,
        images=rng.integers(0, 256, (40, 20, 24), dtype=np.uint8),
        labels=np.arange(40) % 2,
    )
    argv = ["train", "--dataset", path, "--epochs", "0", "--no-progress"]
    assert cli.main([*argv, "--model", "supervised-sm"]) == 2
    one_line_error(capsys.readouterr().err, "needs square images, got 20x24")
    assert cli.main([*argv, "--model", "sm"]) == 0


def test_supervised_large_recipe_whitens_and_averages_its_hebbian_terms():
    from pynsm.arch import RunningWhitening

    spec = LARGE_MODELS["supervised-sm"]
    task = spec.build(1, 28, 10)
    whitening = [m for m in task.modules() if isinstance(m, RunningWhitening)]
    # 4x4 averages and maxima of the 50 detectors' 23x23 maps: 2 x 50 x 6 x 6
    assert len(whitening) == 1 and whitening[0].num_features == 3600
    strokes = task.layers[0]
    maps = strokes.circuit(torch.rand(2, 1, 28, 28))
    pooled = strokes.feature_pool[0](maps)
    torch.testing.assert_close(
        pooled[:, :50], nn.functional.avg_pool2d(maps, 4, 4, ceil_mode=True)
    )
    torch.testing.assert_close(
        pooled[:, 50:], nn.functional.max_pool2d(maps, 4, 4, ceil_mode=True)
    )
    # the whitening sits between the stroke detectors and the supervised circuit
    assert whitening[0] is task.layers[0].feature_pool[-1]
    # the layers learn one after the other: the stroke detectors first (the
    # whitening and the supervised circuit are not run), then the circuit
    assert task.layerwise == (LAYERWISE_EPOCHS,)
    task.train()
    x, labels = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    task.on_epoch_start(0, spec.epochs)
    task.training_loss((x, labels))
    assert int(whitening[0].num_samples_tracked) == 0
    task.on_epoch_start(LAYERWISE_EPOCHS, spec.epochs)
    task.training_loss((x, labels))
    assert int(whitening[0].num_samples_tracked) == 4  # once per step
    # learning rate, in each layer's phase: full for 100 steps, then 1/t
    optimizer = torch.optim.SGD(task.parameters(), lr=spec.lr)
    steps = 600
    schedule = spec.scheduler(optimizer, spec.epochs, steps)
    rates = []
    for _ in range(steps * LAYERWISE_EPOCHS + 400):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    for start in (0, steps * LAYERWISE_EPOCHS):
        assert rates[start + 1] == rates[start + 100] == spec.lr
        assert rates[start + 200] == pytest.approx(spec.lr / 2)
        assert rates[start + 399] == pytest.approx(spec.lr * 100 / 399)
