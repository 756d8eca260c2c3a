"""Do the SSL defaults learn? Few-shot readouts and collapse diagnostics on digits.

Run: ``python tests/benchmarks/bench_ssl_fewshot.py [--models msn pmsn swav]
[--epochs N] [--seed 0] [--backbone conv|vit] [--flip-p 0.0]``.

Each model is built and trained exactly as ``pynsm train --model M`` does (its
recipe in :mod:`pynsm.cli.recipes`: optimizer, learning rate, warm-up and cosine
schedule, epochs, batch size), on scikit-learn's digits (75/25 stratified split,
seed 0). Before and after training it prints the readouts of the backbone features
(``embed``): the 1- and 5-shot linear probes (mean of 10 draws), the all-label
linear probe and a kNN; and the quantities that tell *why* a model does or does not
learn:

* ``rank``: effective rank of the training features (``exp`` of the entropy of the
  normalised singular values; a collapsed model has rank near 1);
* ``H(mean)``: entropy of the mean prototype assignment of whole images, against
  ``log K`` (far below: few prototypes in use, i.e. collapse);
* ``H(each)``: mean entropy of one image's assignment (near ``log K``: the network
  does not tell images apart, so its targets carry no signal);
* ``used``: prototypes that are the top assignment of at least one image;
* ``moved``: relative change of the backbone's weights ``||W - W0|| / ||W0||``.

``--backbone vit`` and ``--flip-p 0.5`` rebuild MSN/PMSN (``--backbone``) or every
model (``--flip-p``) with the former defaults, to measure what they cost.
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import torch
from torch import nn
from torch.utils.data import DataLoader

from pynsm.cli.recipes import MODELS
from pynsm.data import load_digits
from pynsm.eval import (
    extract_embeddings,
    fewshot_probe_accuracy,
    knn_accuracy,
    linear_probe_accuracy,
)
from pynsm.ssl import MSN, PMSN, SwaV
from pynsm.train import Trainer


def effective_rank(features: torch.Tensor) -> float:
    """``exp(entropy(s / sum(s)))`` of the singular values of centred features."""
    centred = features.double() - features.double().mean(0)
    values = torch.linalg.svdvals(centred)
    p = values / values.sum()
    return float(torch.exp(-(p * p.clamp_min(1e-30).log()).sum()))


@torch.no_grad()
def assignments(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Prototype probabilities ``[N, K]`` of whole images (target net for MSN)."""
    if isinstance(model, MSN):
        z = nn.functional.normalize(model.encode_target(images), dim=1)
        w = nn.functional.normalize(model.prototypes.weight, dim=1)
        return torch.softmax(z @ w.T / model.criterion.temperature, dim=1)
    scores = model.prototypes.scores(model.project(images))
    return torch.softmax(scores / model.criterion.temperature, dim=1)


def readouts(model: nn.Module, train, test) -> dict[str, float]:
    model.eval()
    tr = extract_embeddings(model, DataLoader(train, batch_size=512), method="embed")
    te = extract_embeddings(model, DataLoader(test, batch_size=512), method="embed")
    shots = fewshot_probe_accuracy(tr.output, tr.label, te.output, te.label)
    p = assignments(model, train.tensors[0])
    mean = p.mean(0)
    model.train()
    return {
        "1-shot": shots[1],
        "5-shot": shots[5],
        "all": linear_probe_accuracy(tr.output, tr.label, te.output, te.label),
        "kNN": knn_accuracy(tr.output, tr.label, te.output, te.label),
        "rank": effective_rank(tr.output),
        "H(mean)": float(-(mean * mean.clamp_min(1e-30).log()).sum()),
        "H(each)": float(-(p * p.clamp_min(1e-30).log()).sum(1).mean()),
        "log K": math.log(p.shape[1]),
        "used": float(torch.bincount(p.argmax(1), minlength=p.shape[1]).gt(0).sum()),
    }


def build(name: str, backbone: str | None, flip_p: float | None) -> nn.Module:
    if backbone is None and flip_p is None:
        return MODELS[name].build(1, 8, 10)
    kwargs = {} if flip_p is None else {"flip_p": flip_p}
    if name == "swav":
        return SwaV(in_channels=1, image_size=8, **kwargs)
    if backbone is not None:
        kwargs["backbone"] = backbone
    return (MSN if name == "msn" else PMSN)(in_channels=1, image_size=8, **kwargs)


def fit(model: nn.Module, name: str, epochs: int, seed: int, train) -> float:
    """Train ``model`` with the recipe of ``--model name``; returns the seconds."""
    spec = MODELS[name]
    steps_per_epoch = -(-len(train) // spec.batch_size)

    def optimizer(params):
        return spec.optimizer(params, lr=spec.lr, **dict(spec.optimizer_kwargs))

    def scheduler(opt):
        return spec.scheduler(opt, epochs, steps_per_epoch)

    trainer = Trainer(
        model,
        epochs=epochs,
        batch_size=spec.batch_size,
        optimizer=optimizer,
        scheduler=None if spec.scheduler is None else scheduler,
        scheduler_interval="step",
        seed=seed,
        progress=False,
    )
    start = time.perf_counter()
    trainer.fit(train)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["msn", "pmsn", "swav"])
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backbone", choices=["conv", "vit"], default=None)
    parser.add_argument("--flip-p", type=float, default=None)
    args = parser.parse_args()
    train, test = load_digits()
    for name in args.models:
        spec = MODELS[name]
        epochs = spec.epochs if args.epochs is None else args.epochs
        torch.manual_seed(args.seed)
        model = build(name, args.backbone, args.flip_p)
        initial = copy.deepcopy(model)
        before = readouts(model, train, test)
        seconds = fit(model, name, epochs, args.seed, train)
        after = readouts(model, train, test)
        moved = [
            float((p.detach() - q.detach()).norm() / q.detach().norm())
            for p, q in zip(model.backbone.parameters(), initial.backbone.parameters())
            if p.dim() > 1
        ]
        print(
            f"{name}: {epochs} epochs, {seconds:.1f} s, {torch.get_num_threads()} "
            f"threads; backbone weights moved {sum(moved) / len(moved):.2f} (mean "
            "relative change)"
        )
        for key in before:
            print(f"  {key:8} random init {before[key]:7.3f} trained {after[key]:7.3f}")


if __name__ == "__main__":
    main()
