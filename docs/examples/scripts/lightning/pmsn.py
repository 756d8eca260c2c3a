"""PMSN on the bundled digits, with Lightning.

Same as MSN, with a power-law target for the mean prototype assignment.

The task's hooks run from Lightning's through
``pynsm.train.lightning.to_lightning``.

    python docs/examples/scripts/lightning/pmsn.py --epochs 10
    python docs/examples/scripts/lightning/pmsn.py --epochs 1 --max-steps 2
"""

from __future__ import annotations

import argparse

import lightning
import torch
from torch.utils.data import DataLoader, Subset

from pynsm.data import load_digits
from pynsm.eval import extract_embeddings, knn_accuracy
from pynsm.ssl import PMSN
from pynsm.train.lightning import to_lightning


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--subset", type=int, default=None, help="train on the first N images only"
    )
    parser.add_argument(
        "--max-steps", type=int, default=-1, help="stop after N optimizer steps"
    )
    args = parser.parse_args(argv)

    lightning.seed_everything(args.seed, verbose=False)
    train, test = load_digits()
    if args.subset is not None:
        train = Subset(train, range(args.subset))
    loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, drop_last=True)

    model = PMSN(in_channels=1, image_size=8, power_law_exponent=0.25)
    module = to_lightning(model, optimizer=torch.optim.AdamW, lr=args.lr)
    trainer = lightning.Trainer(
        max_epochs=args.epochs,
        max_steps=args.max_steps,
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader)

    accuracy = evaluate(model, train, test)
    print(f"kNN accuracy on the test set: {accuracy:.3f}")
    return accuracy


def evaluate(model, train, test) -> float:
    """kNN accuracy of the backbone features (``model.embed``)."""

    def features(data):
        loader = DataLoader(data, batch_size=256)
        return extract_embeddings(model, loader, method="embed")

    train_emb, test_emb = features(train), features(test)
    return knn_accuracy(
        train_emb.output, train_emb.label, test_emb.output, test_emb.label
    )


if __name__ == "__main__":
    main()
