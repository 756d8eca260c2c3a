"""PMSN on the bundled digits, in plain PyTorch.

Same as MSN, with a power-law target for the mean prototype assignment.

    python docs/examples/scripts/pytorch/pmsn.py --epochs 10
    python docs/examples/scripts/pytorch/pmsn.py --epochs 1 --max-steps 2
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.data import DataLoader, Subset

from pynsm.data import load_digits
from pynsm.eval import extract_embeddings, knn_accuracy
from pynsm.ssl import PMSN


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
        "--max-steps", type=int, default=None, help="stop after N optimizer steps"
    )
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train, test = load_digits()
    if args.subset is not None:
        train = Subset(train, range(args.subset))
    loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, drop_last=True)

    model = PMSN(in_channels=1, image_size=8, power_law_exponent=0.25)
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    total_steps = args.epochs * len(loader)
    if args.max_steps is not None:
        total_steps = min(total_steps, args.max_steps)

    step = 0
    for epoch in range(args.epochs):
        model.train()
        total_loss = 0.0
        for images, _ in loader:
            if step == total_steps:
                break
            loss = model.training_loss(images.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            model.on_after_optimizer_step(step, total_steps)
            step += 1
            total_loss += loss.item()
        print(f"epoch {epoch}: loss {total_loss / max(len(loader), 1):.4f}")
        if step == total_steps:
            break

    accuracy = evaluate(model, train, test, device)
    print(f"kNN accuracy on the test set: {accuracy:.3f}")
    return accuracy


def evaluate(model, train, test, device) -> float:
    """kNN accuracy of the backbone features (``model.embed``)."""
    model.to(device)

    def features(data):
        loader = DataLoader(data, batch_size=256)
        return extract_embeddings(model, loader, method="embed")

    train_emb, test_emb = features(train), features(test)
    return knn_accuracy(
        train_emb.output, train_emb.label, test_emb.output, test_emb.label
    )


if __name__ == "__main__":
    main()
