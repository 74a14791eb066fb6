"""The client's projection, measured: accuracy and seconds per encrypted iteration against the number of principal
components k it keeps, at one width of input features.

    python scripts/fhe_projection.py --features runs/tokens768-fashion5k.npz \
        --bench benchmarks/results/fhe-widths.json --out encvit/fhe/runs/projection

For each k (the candidates of `--components auto`, and all features): the numpy twin of the encrypted trainer
(its exact arithmetic: the encrypted run reaches the same accuracy up to CKKS noise) trained on k components, its
validation and test accuracy; logistic regression (scikit-learn, C chosen on validation) on the same k components;
and the seconds per encrypted iteration that `benchmarks/bench_fhe.py --dim K1,K2,...` measured at width k. Writes
OUT.csv and OUT.png (accuracy and time against k).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np
import pandas as pd

from encvit.common.atomic import save_figure, write_text
from encvit.fhe.components import candidates
from encvit.fhe.config import FHEConfig
from encvit.fhe.features import read_features_file
from encvit.fhe.head import FeatureScaler, FeatureSplits
from encvit.fhe.reference import logistic_reference
from encvit.fhe.train import train_reference


def projected(features: FeatureSplits, k: int | None) -> FeatureSplits:
    """The splits on k PCA components of the training features (whitened), for the logistic reference."""
    scaler = FeatureScaler.fit(features.train[0], whiten_ridge=0.01, components=k)
    parts = [
        (scaler.transform(x)[:, :-1].astype(np.float32), y) for x, y in (features.train, features.val, features.test)
    ]
    return FeatureSplits(*parts, classes=features.classes, backbone="", backbone_hash="", dataset=features.dataset)


def bench_seconds(path: str | None) -> dict[int, dict]:
    """Median and min-max seconds per encrypted iteration by width, from a bench_fhe.py JSON report."""
    if not path:
        return {}
    with open(path) as handle:
        report = json.load(handle)
    return {r["dim"]: r["comparison"]["summary"]["encrypted"] for r in report["results"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", required=True, help="a features file (.npz)")
    parser.add_argument("--bench", help="a bench_fhe.py --json report with the widths of the candidates")
    parser.add_argument("--out", default="encvit/fhe/runs/projection", help="OUT.csv and OUT.png")
    parser.add_argument(
        "--accuracy-from",
        metavar="CSV",
        help="take the accuracy columns from an earlier OUT.csv of the same features instead of "
        "training again (the fits take about half an hour at 768 features on 2 cores); the "
        "seconds come from --bench",
    )
    args = parser.parse_args(argv)
    features = read_features_file(args.features)
    seconds = bench_seconds(args.bench)
    if args.accuracy_from:
        table = pd.read_csv(args.accuracy_from)
        if sorted(table.components) != sorted(features.dim if v == "all" else int(v) for v in candidates(features.dim)):
            parser.error(
                f"--accuracy-from {args.accuracy_from}: its components {list(table.components)} are not "
                f"the candidates at {features.dim} features"
            )
        reference_acc = float(table.logistic_on_all_test_acc.iloc[0])
    else:
        reference_acc = logistic_reference(features)["test_acc"]
        config = FHEConfig(features=args.features)
        rows = []
        for value in candidates(features.dim):
            k = features.dim if value == "all" else int(value)
            twin = train_reference(features, replace(config, components=value))
            probe = logistic_reference(projected(features, None if value == "all" else k))
            rows.append(
                {
                    "components": k,
                    "twin_val_acc": twin.best["val_acc"],
                    "twin_test_acc": twin.best["test_acc"],
                    "twin_epochs": len(twin.rows),
                    "logistic_on_components_test_acc": probe["test_acc"],
                    "logistic_on_all_test_acc": reference_acc,
                }
            )
            print(rows[-1], flush=True)
        table = pd.DataFrame(rows)
    for column, key in (("seconds_per_iteration", "median"), ("seconds_min", "min"), ("seconds_max", "max")):
        table[column] = [seconds.get(k, {}).get(key, float("nan")) for k in table.components]
    write_text(f"{args.out}.csv", table.round(3).to_csv(index=False))
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.2, 3.6))
    ax.plot(table.components, table.twin_test_acc, "o-", label="encrypted trainer's twin, test")
    ax.plot(table.components, table.logistic_on_components_test_acc, "s--", label="logistic regression on k components")
    ax.axhline(reference_acc, color="tab:red", ls="-.", lw=0.8, label="logistic regression on all features")
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"principal components kept (of {features.dim} features)")
    ax.set_ylabel("test accuracy (%)")
    if table.seconds_per_iteration.notna().any():
        right = ax.twinx()
        right.plot(table.components, table.seconds_per_iteration, "^:", color="tab:grey", label="s / iteration")
        right.set_ylabel("seconds per encrypted iteration")
        right.legend(loc="lower right", fontsize=8)
    ax.legend(loc="lower center", fontsize=8)
    ax.set_title(f"{features.dataset}: the client's projection", fontsize=10)
    fig.tight_layout()
    save_figure(fig, f"{args.out}.png")
    print(f"wrote {args.out}.csv and {args.out}.png")


if __name__ == "__main__":
    main()
