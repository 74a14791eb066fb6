"""When does the proposed method help? Gaps on encrypted images as a function of training-set size and domain.

For each dataset, training-set size and seed, three runs on encrypted images: MeLo, proposed and full
fine-tuning (and proposed with each extra patch-embedding learning rate). The gaps proposed - MeLo and
full - MeLo are paired by seed and summarised with a 95% interval.
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import stats

from .atomic import save_figure, write_text
from .backbones import create_backbone, describe
from .data import Splits, load_dataset, stratified_subset
from .errors import ConfigError
from .samples import DEMO_PASSPHRASE
from .train import TrainConfig, train

GAPS = (("proposed - MeLo", "proposed"), ("full - MeLo", "full"))


def arm_name(method: str, patch_lr: float | None) -> str:
    """The label of one arm of the study: a method, with its patch learning rate when set."""
    return method if patch_lr is None else f"{method} (patch lr {patch_lr:g})"


def data_size_study(base: TrainConfig, datasets=("fashion5k", "mnist5k"), sizes=(500, 1000, 2000, 4500),
                    seeds: int = 3, patch_lrs=(), out: str | Path | None = None, log=print) -> pd.DataFrame:
    """Train MeLo, proposed (with each patch lr) and full on encrypted subsets; one row per run."""
    if seeds < 1 or not sizes or not datasets:
        raise ConfigError("the study needs at least one dataset, one size and one seed")
    backbone = create_backbone(base.backbone, pretrained=base.pretrained, weights=base.weights)
    geometry = describe(backbone, base.backbone)
    passphrase = base.passphrase or DEMO_PASSPHRASE
    arms = [("melo", None), ("proposed", None), *[("proposed", lr) for lr in patch_lrs], ("full", None)]
    rows, start = [], time.perf_counter()
    for dataset in datasets:
        full_splits = load_dataset(dataset, geometry.image_size, geometry.channels)
        val, test = (stratified_subset(s, base.limit) if base.limit else s for s in (full_splits.val, full_splits.test))
        for size in sizes:
            if size > len(full_splits.train):
                raise ConfigError(f"{dataset} has {len(full_splits.train)} training images, fewer than {size}")
            splits = Splits(dataset, stratified_subset(full_splits.train, size), val, test)
            for seed in range(base.seed, base.seed + seeds):
                for method, patch_lr in arms:
                    config = replace(base, dataset=dataset, method=method, seed=seed, patch_lr=patch_lr,
                                     test_every_epoch=False,
                                     passphrase=passphrase, key=None, out=None, limit=None)
                    result = train(config, splits=splits, backbone=copy.deepcopy(backbone))
                    rows.append({"dataset": dataset, "size": size, "seed": seed, "arm": arm_name(method, patch_lr),
                                 "method": method, "patch_lr": patch_lr, "val_acc": result["val_acc"],
                                 "test_acc": result["test_acc"], "seconds": result["seconds"]})
                    log(f"{dataset} n={size} seed {seed} {rows[-1]['arm']}: test {result['test_acc']:.2f}%")
    table = pd.DataFrame(rows)
    if out:
        write_study(table, Path(out), {"backbone": base.backbone, "epochs": base.epochs, "seeds": seeds,
                                       "seconds_total": time.perf_counter() - start})
    return table


def gaps(table: pd.DataFrame) -> pd.DataFrame:
    """Seed-paired gaps to MeLo on encrypted images per dataset, size and arm: mean, 95% interval, p-value."""
    wide = table.pivot_table(index=["dataset", "size", "seed"], columns="arm", values="test_acc")
    rows = []
    for arm in [a for a in wide.columns if a != "melo"]:
        for (dataset, size), part in wide.groupby(level=["dataset", "size"]):
            diff = (part[arm] - part["melo"]).dropna().to_numpy()
            n = len(diff)
            sd = diff.std(ddof=1) if n > 1 else float("nan")
            half = stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n) if n > 1 else float("nan")
            p = float(stats.ttest_1samp(diff, 0).pvalue) if n > 1 and sd > 0 else float("nan")
            rows.append({"dataset": dataset, "size": size, "gap": f"{arm} - MeLo", "mean": diff.mean(),
                         "ci95": half, "p_value": p, "seeds": n, "supported": bool(p < 0.05)})
    return pd.DataFrame(rows)


def plot_gaps(summary: pd.DataFrame, path: Path, title: str) -> None:
    """Gap to MeLo (encrypted) against training-set size, one line per dataset and arm, 95% error bars."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for (dataset, gap), part in summary.groupby(["dataset", "gap"]):
        part = part.sort_values("size")
        ax.errorbar(part["size"], part["mean"], yerr=part.ci95.fillna(0), marker="o", capsize=3,
                    linestyle="-" if dataset.startswith("fashion") else "--", label=f"{dataset}: {gap}")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("training images (log scale)")
    ax.set_ylabel("test accuracy gap to MeLo (points)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def write_study(table: pd.DataFrame, out: Path, meta: dict) -> None:
    """study.csv (runs), gaps.csv (paired gaps), study.png and meta.json, each atomically."""
    out.mkdir(parents=True, exist_ok=True)
    summary = gaps(table)
    write_text(out / "study.csv", table.to_csv(index=False))
    write_text(out / "gaps.csv", summary.to_csv(index=False))
    write_text(out / "meta.json", json.dumps(meta, indent=1))
    plot_gaps(summary, out / "study.png", f"{meta['backbone']}, encrypted images, {meta['seeds']} seed(s)")


def load_study(folder: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(runs, gaps, meta) of a study folder."""
    folder = Path(folder)
    if not (folder / "study.csv").exists():
        raise ConfigError(f"{folder} holds no study results (study.csv)")
    return (pd.read_csv(folder / "study.csv"), pd.read_csv(folder / "gaps.csv"),
            json.loads((folder / "meta.json").read_text()))
