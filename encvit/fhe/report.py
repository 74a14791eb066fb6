"""Figures and tables of encrypted head runs (for notebook 03, docs/fhe.md and the command line)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..common.shipped import SHIPPED_FHE_RUNS as SHIPPED_RUNS

# The runs of `encvit fhe-train` with its defaults, shipped with the package (result.json, metrics.csv, fhe.json,
# config.json and the adapter): made by `encvit fhe-train --dataset DATASET --out encvit/fhe/runs/DATASET`.


def load_run(run: str | Path) -> dict:
    """A run directory's result.json, fhe.json and config.json as dicts, and metrics.csv as a DataFrame."""
    run = Path(run)
    return {
        "result": json.loads((run / "result.json").read_text()),
        "fhe": json.loads((run / "fhe.json").read_text()),
        "config": json.loads((run / "config.json").read_text()),
        "metrics": pd.read_csv(run / "metrics.csv"),
    }


def shipped_runs() -> dict[str, dict]:
    """The shipped runs by dataset name (fashion5k first, the default)."""
    found = (
        {p.name: load_run(p) for p in sorted(SHIPPED_RUNS.iterdir()) if (p / "result.json").exists()}
        if SHIPPED_RUNS.is_dir()
        else {}
    )
    return dict(sorted(found.items(), key=lambda item: item[0] != "fashion5k"))


def runs_table(runs: dict[str, dict]) -> pd.DataFrame:
    """One row per run: accuracy against the reference, epochs, time, refreshes and traffic (HETAL for scale)."""
    rows = []
    for name, run in runs.items():
        r = run["result"]
        rows.append(
            {
                "dataset": name,
                "encrypted test %": r["encrypted_test_acc"],
                "reference test %": r["reference_test_acc"],
                "difference (points)": r["difference"],
                "epochs run (best)": f"{r['epochs_run']} ({r['best_epoch']})",
                "iterations": r["iterations"],
                "s / iteration": r["seconds_per_iteration"],
                "refreshes": r["refreshes"],
                "wall time (s)": r["wall_seconds"],
                "MB to server": r["megabytes_to_server"],
                "MB back": r["megabytes_to_client"],
                "HETAL (s per run)": "{}-{}".format(*r["hetal_seconds_per_run"]),
            }
        )
    return pd.DataFrame(rows).set_index("dataset")


def plot_training_curves(
    encrypted: list[dict], plain: list[dict], title: str, exact: list[dict] | None = None, ax=None
) -> Figure:
    """Per epoch: validation accuracy from the encrypted validation logits (what the client decides on, with the
    kept epoch marked) and the test accuracy the client reports, next to the numpy twin's (and exact softmax's)."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 3.4))
    epochs = [r["epoch"] for r in encrypted]
    ax.plot(
        [r["epoch"] for r in plain],
        [r["val_acc"] for r in plain],
        "-",
        color="tab:blue",
        lw=2.5,
        alpha=0.5,
        label="validation, numpy twin",
    )
    ax.plot(
        epochs,
        [r["val_acc"] for r in encrypted],
        "o",
        color="tab:orange",
        ms=3.5,
        label="validation, from encrypted logits",
    )
    ax.plot(epochs, [r["test_acc"] for r in encrypted], "--", color="tab:green", lw=1.2, label="test (reported only)")
    if exact is not None:
        ax.plot(
            [r["epoch"] for r in exact],
            [r["val_acc"] for r in exact],
            ":",
            color="tab:gray",
            label="validation, exact softmax (numpy)",
        )
    best = [r["epoch"] for r in encrypted if r["best"]][-1]
    ax.axvline(best, color="black", lw=0.8, alpha=0.6)
    # At the top, on the side of the line with more room: the legend sits at the bottom, the last epoch at the edge.
    left = best > (min(epochs) + max(epochs)) / 2
    ax.annotate(
        f"kept: epoch {best}",
        (best, 1),
        xycoords=("data", "axes fraction"),
        xytext=(-3 if left else 3, -3),
        textcoords="offset points",
        ha="right" if left else "left",
        va="top",
        fontsize=8,
        bbox={"fc": "white", "ec": "none", "alpha": 0.8, "pad": 1},
    )
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def wire_table(stats: dict) -> pd.DataFrame:
    """Bytes sent each way by kind of message, in MB."""
    rows = [
        {"direction": direction.replace("_", " "), "message": kind.replace("_", " "), "MB": size / 1e6}
        for direction, kinds in stats["bytes"].items()
        for kind, size in kinds.items()
    ]
    return pd.DataFrame(rows)


def key_table(client, server) -> pd.DataFrame:
    """Which keys the client and the server hold (a `Client` and a `Server`)."""
    return pd.DataFrame(
        {
            "client": {
                "secret key (decrypts)": "yes" if client.context.has_secret_key() else "no",
                "relinearisation key": "made, sent",
                "rotation keys": "made, sent",
            },
            "server": {
                "secret key (decrypts)": "yes" if server.context.has_secret_key() else "no",
                "relinearisation key": "yes" if server.context.has_relin_keys() else "no",
                "rotation keys": "yes" if server.engine.rotation_keys is not None else "no",
            },
        }
    )
