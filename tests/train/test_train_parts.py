"""The shared parts: task contract, optimizer builder, progress bar choice."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import nn

from pynsm.train import TrainingTask
from pynsm.train import progress as progress_module
from pynsm.train.hooks import call_hook, check_task, step_metrics
from pynsm.train.optim import build_optimizer, build_scheduler


class Task(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(2))
        self.frozen = nn.Parameter(torch.ones(2), requires_grad=False)

    def training_loss(self, batch):
        return self.w.sum()


def test_task_contract():
    task = Task()
    assert isinstance(task, TrainingTask) and check_task(task) is task
    assert call_hook(task, "on_epoch_start", 0, 1) is None  # absent: nothing
    assert step_metrics(task) == {}
    task.step_metrics = lambda: {"a": 1, "b": torch.tensor([2.0])}
    metrics = step_metrics(task)
    assert metrics["a"] == 1.0 and metrics["b"].shape == ()
    task.step_metrics = lambda: {"a": "x"}
    with pytest.raises(TypeError, match=r"step_metrics\(\)\['a'\]"):
        step_metrics(task)
    task.on_after_backward = 3
    with pytest.raises(TypeError, match="on_after_backward must be callable"):
        check_task(task)
    with pytest.raises(TypeError, match="training_loss"):
        check_task(nn.Linear(2, 2))


def test_optimizer_builder():
    task = Task()
    sgd = build_optimizer(None, task)
    assert type(sgd) is torch.optim.SGD and sgd.param_groups[0]["lr"] == 0.01
    assert sgd.param_groups[0]["params"] == [task.w]  # frozen ones left out
    adam = build_optimizer(torch.optim.Adam, task, lr=0.5)
    assert adam.param_groups[0]["lr"] == 0.5
    assert build_optimizer(adam, task) is adam
    made = build_optimizer(lambda p: torch.optim.SGD(p, lr=3.0), task)
    assert made.param_groups[0]["lr"] == 3.0
    with pytest.raises(TypeError, match="must return"):
        build_optimizer(lambda p: None, task)
    with pytest.raises(TypeError, match="subclass"):
        build_optimizer(dict, task)
    with pytest.raises(ValueError, match="lr"):
        build_optimizer(None, task, lr=float("nan"))
    step = build_scheduler(lambda o: torch.optim.lr_scheduler.StepLR(o, 1), sgd)
    assert build_scheduler(step, sgd) is step and build_scheduler(None, sgd) is None
    with pytest.raises(TypeError, match="scheduler"):
        build_scheduler(lambda o: 3, sgd)


def _fake_notebook(monkeypatch, widgets):
    shell = type("ZMQInteractiveShell", (), {})()
    fake = types.ModuleType("IPython")
    fake.get_ipython = lambda: shell
    monkeypatch.setitem(sys.modules, "IPython", fake)
    real_find_spec = progress_module.importlib.util.find_spec

    def find_spec(name, *args):
        if name == "ipywidgets":
            return object() if widgets else None
        return real_find_spec(name, *args)

    monkeypatch.setattr(progress_module.importlib.util, "find_spec", find_spec)


def test_progress_bar_never_warns(monkeypatch, recwarn):
    assert progress_module.progress_bar_class().__module__ == "tqdm.std"
    _fake_notebook(monkeypatch, widgets=False)  # tqdm.auto would warn here
    bar_class = progress_module.progress_bar_class()
    assert bar_class.__module__ == "tqdm.std"
    bar_class(total=2, disable=True).close()
    assert not [w for w in recwarn if "Tqdm" in type(w.message).__name__]
    _fake_notebook(monkeypatch, widgets=True)
    assert progress_module.progress_bar_class().__module__ == "tqdm.notebook"
