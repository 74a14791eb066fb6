"""Choose each method's default learning rate on the validation split (never the test set).

    python scripts/choose_lr.py [--dataset fashion5k] [--epochs 6] [--setting encrypted]

Trains every (method, lr) on the training split of the dataset and prints validation accuracy; the best lr per
method is the default in encvit/training/run.py (DEFAULT_LR). Test accuracy is not computed.
"""

import argparse
import copy

import pandas as pd

from encvit.common.shipped import DEMO_PASSPHRASE
from encvit.data.datasets import Splits, load_dataset
from encvit.models.backbones import create_backbone
from encvit.training.run import TrainConfig, train

GRID = {"full": (2e-4, 5e-4, 1e-3, 2e-3), "melo": (3e-3, 1e-2, 3e-2), "proposed": (3e-3, 1e-2, 3e-2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion5k")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--setting", default="encrypted", choices=["plain", "encrypted"])
    parser.add_argument("--methods", default="full,melo,proposed")
    parser.add_argument("--lrs", help="comma-separated learning rates instead of the grid")
    args = parser.parse_args()
    backbone = create_backbone("encvit-tiny")
    splits = load_dataset(args.dataset)
    no_test = Splits(splits.name, splits.train, splits.val, splits.test.subset([]))
    rows = []
    for method in args.methods.split(","):
        for lr in [float(v) for v in args.lrs.split(",")] if args.lrs else GRID[method]:
            config = TrainConfig(
                dataset=args.dataset,
                method=method,
                lr=lr,
                epochs=args.epochs,
                progress=False,
                passphrase=DEMO_PASSPHRASE if args.setting == "encrypted" else None,
            )
            result = train(config, splits=no_test, backbone=copy.deepcopy(backbone))
            rows.append({"method": method, "lr": lr, "val_acc": result["val_acc"], "seconds": result["seconds"]})
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    best = table.loc[table.groupby("method").val_acc.idxmax()]
    print("best on validation:", dict(zip(best.method, best.lr, strict=False)))


if __name__ == "__main__":
    main()
