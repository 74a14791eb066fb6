"""How the defaults of `encvit fhe-train` were chosen: on training and validation data only, never on test.

    python -m encvit.fhe.selection [--splits 10] [--out selection.csv]

Each dataset's training split is cut at random into 80% for training and 20% that stands in for the test set
(`splits` times); the validation split stays what it is (early stopping and the reference's C). Every candidate
trains the numpy twin (the encrypted trainer's exact arithmetic: tests/test_fhe.py checks that the two agree), and
its accuracy on the stand-in test is compared with the logistic-regression reference fitted on the same 80%. The
candidate with the best mean gap over both datasets, at a moderate number of epochs, became the default.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import pandas as pd

from .features import dataset_features
from .head import FeatureSplits
from .reference import logistic_reference
from .train import FHEConfig, train_reference

# name -> (FHEConfig overrides, exact softmax). The first is the default; the last row is the trainer before
# early stopping and whitening were added (5 epochs, constant lr 8, radius 2, standardised features).
CANDIDATES = {
    "default: radius 4, lr 8, cosine over 60 epochs, stop on val loss (patience 10), whitened": ({}, False),
    "constant lr instead of cosine": ({"lr_schedule": "constant"}, False),
    "stop on val accuracy instead of loss": ({"stop_on": "val_acc"}, False),
    "radius 3, lr 6": ({"softmax_radius": 3.0, "lr": 6.0}, False),
    "not whitened (standardised only)": ({"whiten_ridge": None}, False),
    "exact softmax (not possible under CKKS)": ({}, True),
    "before: radius 2, lr 8 constant, 5 epochs, standardised": (
        {"softmax_radius": 2.0, "lr_schedule": "constant", "epochs": 5, "whiten_ridge": None},
        False,
    ),
}


def stand_in_split(features: FeatureSplits, seed: int, fraction: float = 0.2) -> FeatureSplits:
    """The training split cut into train and a stand-in test (`fraction`); validation unchanged."""
    x, y = features.train
    order = np.random.default_rng(1000 + seed).permutation(len(y))
    cut = int(round(len(y) * (1 - fraction)))
    return replace(features, train=(x[order[:cut]], y[order[:cut]]), test=(x[order[cut:]], y[order[cut:]]))


def select(datasets=("fashion5k", "mnist5k"), splits: int = 10, progress=print) -> pd.DataFrame:
    """One row per dataset, split and candidate: stand-in test accuracy, the reference's, their gap, epochs."""
    rows = []
    for dataset in datasets:
        features = dataset_features("encvit-tiny", dataset)
        for seed in range(splits):
            part = stand_in_split(features, seed)
            reference = logistic_reference(part)
            for name, (overrides, exact) in CANDIDATES.items():
                # every feature kept: these candidates predate the projection, which `--components auto` then
                # chooses per run (encvit.fhe.components)
                config = FHEConfig(dataset=dataset, seed=seed, components="all", **overrides)
                run = train_reference(part, config, exact=exact)
                rows.append(
                    {
                        "dataset": dataset,
                        "split": seed,
                        "candidate": name,
                        "test_acc": run.best["test_acc"],
                        "reference_test_acc": reference["test_acc"],
                        "gap": run.best["test_acc"] - reference["test_acc"],
                        "best_epoch": run.best_epoch,
                        "epochs_run": len(run.rows),
                    }
                )
            progress(f"{dataset} split {seed + 1}/{splits} done")
    return pd.DataFrame(rows)


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per candidate and dataset: mean gap with its standard error, the worst split, epochs run."""
    grouped = rows.groupby(["candidate", "dataset"], sort=False)
    out = grouped.agg(
        mean_gap=("gap", "mean"),
        se=("gap", lambda g: g.std(ddof=1) / np.sqrt(len(g))),
        worst=("gap", "min"),
        epochs_run=("epochs_run", "mean"),
    )
    return out.unstack("dataset").round(2)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", type=int, default=10)
    parser.add_argument("--out", help="also write every row as CSV")
    args = parser.parse_args(argv)
    if args.splits < 2:
        parser.error(f"--splits must be at least 2, got {args.splits}")
    rows = select(splits=args.splits)
    if args.out:
        rows.to_csv(args.out, index=False)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(summary(rows))


if __name__ == "__main__":
    main()
