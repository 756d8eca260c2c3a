"""Linear and k-shot probes: the protocol, the torch solver, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pynsm.eval import (
    fewshot_probe_accuracy,
    fit_logistic_regression,
    linear_probe_accuracy,
    probes,
)

sklearn = pytest.importorskip("sklearn")


def _clusters(n=400, classes=4, dim=16, spread=10.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = spread * torch.randn(classes, dim, generator=g)[y] + torch.randn(
        n, dim, generator=g
    )
    return x, y


def test_linear_probe_separable_shuffled_and_validation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    assert linear_probe_accuracy(x[:150], y[:150], x[150:], y[150:], C=100.0) >= 0.96
    noise = torch.randint(0, 2, (200,), generator=g)  # independent of the features
    assert linear_probe_accuracy(x[:150], noise[:150], x[150:], noise[150:]) < 0.75
    with pytest.raises(ValueError, match="train_labels"):
        linear_probe_accuracy(x, y[:10], x, y)
    with pytest.raises(ValueError, match="width"):
        linear_probe_accuracy(x, y, x[:, :3], y)
    with pytest.raises(TypeError, match="integers"):
        linear_probe_accuracy(x, y.float(), x, y)
    with pytest.raises(ValueError, match="2 classes"):
        linear_probe_accuracy(x, torch.zeros(200, dtype=torch.long), x, y)
    with pytest.raises(ValueError, match="NaN"):
        linear_probe_accuracy(x.clone().fill_(float("nan")), y, x, y)
    with pytest.raises(ValueError, match="solver"):
        linear_probe_accuracy(x, y, x, y, solver="adam")
    with pytest.raises(ValueError, match="C must be"):
        linear_probe_accuracy(x, y, x, y, C=0.0)


def test_fewshot_protocol_equals_the_recipe_written_out():
    from sklearn.linear_model import LogisticRegression

    x, y = _clusters(spread=0.7)  # overlapping: accuracies differ between draws
    train_x, train_y, test_x, test_y = x[:300], y[:300], x[300:], y[300:]
    result = fewshot_probe_accuracy(
        train_x, train_y, test_x, test_y, shots=(1, 3), draws=4, seed=5
    )
    # the protocol by hand: whole-train standardisation, k per class drawn with
    # default_rng(seed + draw) in class order, logistic regression, mean accuracy
    a, b = train_x.double().numpy(), test_x.double().numpy()
    mean, std = a.mean(0), a.std(0, ddof=1)
    a, b = (a - mean) / std, (b - mean) / std
    labels = train_y.numpy()
    for k in (1, 3):
        scores = []
        for draw in range(4):
            rng = np.random.default_rng(5 + draw)
            chosen = np.concatenate(
                [
                    rng.choice(np.flatnonzero(labels == c), k, replace=False)
                    for c in range(4)
                ]
            )
            model = LogisticRegression(C=1.0, max_iter=2000).fit(
                a[chosen], labels[chosen]
            )
            scores.append(model.score(b, test_y.numpy()))
        assert result[k] == pytest.approx(np.mean(scores), abs=1e-9)
    assert result[1] != result[3]


def test_fewshot_separable_is_perfect_and_shuffled_is_chance():
    x, y = _clusters()
    result = fewshot_probe_accuracy(x[:300], y[:300], x[300:], y[300:])
    assert result == {1: 1.0, 5: 1.0}
    shuffled = y[torch.randperm(400, generator=torch.Generator().manual_seed(3))]
    chance = fewshot_probe_accuracy(x[:300], shuffled[:300], x[300:], shuffled[300:])
    assert all(0.1 < value < 0.42 for value in chance.values())  # chance is 0.25


def test_fewshot_seeds_labels_and_errors():
    x, y = _clusters(spread=0.7)
    one = fewshot_probe_accuracy(x[:300], y[:300], x[300:], y[300:], seed=1)
    assert one == fewshot_probe_accuracy(x[:300], y[:300], x[300:], y[300:], seed=1)
    assert one != fewshot_probe_accuracy(x[:300], y[:300], x[300:], y[300:], seed=2)
    # labels are names: any integers give the same answer as 0..K-1
    renamed = 7 * y - 3
    assert one == fewshot_probe_accuracy(
        x[:300], renamed[:300], x[300:], renamed[300:], seed=1
    )
    with pytest.raises(ValueError, match="smallest class has"):
        fewshot_probe_accuracy(x[:8], y[:8], x, y, shots=(5,))
    with pytest.raises(TypeError, match="shots"):
        fewshot_probe_accuracy(x, y, x, y, shots=5)
    with pytest.raises(ValueError, match="draws"):
        fewshot_probe_accuracy(x, y, x, y, draws=0)


def test_torch_solver_reaches_the_sklearn_optimum():
    from sklearn.linear_model import LogisticRegression

    x, y = _clusters(n=300, classes=3, dim=6, spread=0.8, seed=4)
    x = x.double()
    weight, bias = fit_logistic_regression(x, y, 3, C=0.5, max_iter=150, tol=1e-9)
    model = LogisticRegression(C=0.5, tol=1e-10, max_iter=5000).fit(
        x.numpy(), y.numpy()
    )
    # softmax weights are defined up to a shift shared by all classes
    ours = torch.cat([weight.T, bias[:, None]], 1)
    theirs = torch.from_numpy(np.c_[model.coef_, model.intercept_])
    ours, theirs = ours - ours.mean(0), theirs - theirs.mean(0)
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_auto_solver_switches_to_torch_for_large_data(monkeypatch):
    x, y = _clusters(n=200, classes=2, spread=1.0)
    small = linear_probe_accuracy(x[:150], y[:150], x[150:], y[150:])
    calls = []
    original = probes.fit_logistic_regression

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(probes, "fit_logistic_regression", spy)
    assert linear_probe_accuracy(x[:150], y[:150], x[150:], y[150:]) == small
    assert calls == []  # small: scikit-learn
    monkeypatch.setattr(probes, "SKLEARN_MAX_SAMPLES", 100)
    large = linear_probe_accuracy(x[:150], y[:150], x[150:], y[150:])
    assert calls == [(150, 16)] and abs(large - small) <= 0.02


def test_digits_pixels_give_the_reference_figures():
    from pynsm.data import load_digits

    train, test = load_digits()
    args = (*train.tensors, *test.tensors)
    raw = fewshot_probe_accuracy(*args, standardize=False)
    assert raw[1] == pytest.approx(0.647, abs=0.001)  # issue 8's table
    assert raw[5] == pytest.approx(0.865, abs=0.001)
    standardized = fewshot_probe_accuracy(*args)
    assert standardized[1] == pytest.approx(0.600, abs=0.001)
    assert standardized[5] == pytest.approx(0.845, abs=0.001)


@pytest.mark.parametrize("solver", ["sklearn", "torch"])
def test_fewer_samples_than_features_is_solved_in_the_samples_span(solver):
    # the reduced problem (features U S of the thin SVD) has the same optimum
    g = torch.Generator().manual_seed(2)
    x = torch.randn(12, 40, generator=g, dtype=torch.float64)
    y = torch.arange(12) % 3
    reduced = probes._fit(x, y, 3, 1.0, 2000, solver)
    direct = probes._fit_direct(x, y, 3, 1.0, 2000, solver)
    test = torch.randn(50, 40, generator=g, dtype=torch.float64)
    logits = [test @ w + b for w, b in (reduced, direct)]
    probabilities = [z.softmax(1) for z in logits]
    assert torch.allclose(probabilities[0], probabilities[1], atol=2e-3)
