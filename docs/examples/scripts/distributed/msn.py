"""MSN on the bundled digits, distributed over processes.

The target network follows the anchor network by an EMA after every step.

Launched by ``torchrun``, the ``pynsm`` Trainer starts the process group
(NCCL on CUDA, gloo on the CPU), wraps the model in DistributedDataParallel and gives
every process its share of each epoch through a DistributedSampler. Compared with
the single-process script:

- distributed data parallel training and distributed sampling;
- the Sinkhorn step balances the codes over the batches of all
  processes;
- ``--batch-size`` is per process; only rank 0 prints and evaluates.

    torchrun --nproc_per_node 2 docs/examples/scripts/distributed/msn.py
    torchrun --nproc_per_node 2 docs/examples/scripts/distributed/msn.py \\
        --epochs 1 --subset 64  # smoke
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

from pynsm.data import load_digits
from pynsm.eval import extract_embeddings, knn_accuracy
from pynsm.ssl import MSN
from pynsm.train import Trainer
from pynsm.train.launch import init_distributed_from_env


def main(argv: list[str] | None = None) -> float | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--subset", type=int, default=None, help="train on the first N images only"
    )
    args = parser.parse_args(argv)

    # Start the process group here (the Trainer would otherwise) so that every
    # process can seed its own augmentations before the model is built.
    owns_group = init_distributed_from_env()
    rank = dist.get_rank() if dist.is_initialized() else 0
    torch.manual_seed(args.seed)  # the same initial weights on every process
    train, test = load_digits()
    if args.subset is not None:
        train = Subset(train, range(args.subset))

    model = MSN(in_channels=1, image_size=8, gather_distributed=True)
    torch.manual_seed(args.seed + rank)  # different crops and masks per process
    trainer = Trainer(
        model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=torch.optim.AdamW,
        lr=args.lr,
        seed=args.seed,
        drop_last=True,
        sync_batchnorm=False,
        progress=rank == 0,
    )
    try:
        history = trainer.fit(train)
    finally:
        if owns_group:
            dist.destroy_process_group()
    if rank != 0:
        return None
    for entry in history:
        print(f"epoch {entry['epoch']}: loss {entry['loss']:.4f}")
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
