"""Circuit cases run identically under this package and under pynsm 1.0.1.

`BUILD_SOURCE` is executed in both processes (with the `pynsm` each one imports), so
that the circuits are built by the same code; weights travel as state dicts.
"""

from __future__ import annotations

BUILD_SOURCE = '''
import torch
from torch import nn
import pynsm


def _encoder(spec):
    if spec[0] == "linear":
        return nn.Linear(spec[1], spec[2])
    return nn.Conv2d(spec[1], spec[2], spec[3])


def build_circuit(spec):
    kwargs = dict(spec.get("kwargs", {}))
    if kwargs.pop("relu", False):
        kwargs["iteration_projection"] = torch.relu
    if kwargs.pop("adam_steplr", False):
        kwargs["iteration_optimizer"] = torch.optim.Adam
        kwargs["iteration_scheduler"] = torch.optim.lr_scheduler.StepLR
        kwargs["it_optim_kwargs"] = {"lr": 0.05}
        kwargs["it_sched_kwargs"] = {"step_size": 10, "gamma": 0.5}
    kind = spec["kind"]
    if kind == "single":
        return pynsm.SimilarityMatching(_encoder(spec["enc"]), spec["out"], **kwargs)
    if kind == "multi":
        encoders = [_encoder(e) for e in spec["encs"]]
        return pynsm.MultiSimilarityMatching(encoders, spec["out"], **kwargs)
    return pynsm.SupervisedSimilarityMatching(
        _encoder(spec["enc"]), spec["classes"], spec["out"], **kwargs
    )


def run_case(spec, state, forward_args, loss_args):
    """Forward, loss, backward, one SGD step, forward again."""
    circuit = build_circuit(spec)
    circuit.load_state_dict(state)
    y = circuit(*forward_args)
    out = {"y": y.clone(), "idx": circuit.iteration_idx}
    loss = circuit.loss(*loss_args, y)
    loss.backward()
    out["loss"] = loss.detach().clone()
    out["keys"] = list(circuit.state_dict().keys())
    out["grads"] = {
        name: p.grad.clone()
        for name, p in circuit.named_parameters()
        if p.grad is not None
    }
    torch.optim.SGD(circuit.parameters(), lr=0.05).step()
    out["y_after_step"] = circuit(*forward_args).clone()
    return out


def run_all(cases):
    return {
        name: run_case(c["spec"], c["state"], c["forward"], c["loss"])
        for name, c in cases.items()
    }
'''
