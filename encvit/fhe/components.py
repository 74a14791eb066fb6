"""How many principal components the client keeps (`--components auto`), chosen on validation only.

The client owns its features: it fits the projection in plaintext and can train the numpy twin of the encrypted
trainer (the same polynomial, schedule and stopping rule, so the same arithmetic) for each candidate in seconds.
It keeps the smallest number of components whose twin comes within TOLERANCE points of the best candidate's
validation accuracy: fewer columns make every encrypted iteration cheaper (see docs/fhe.md), and the test split
is never looked at.
"""

from __future__ import annotations

from dataclasses import replace

from .head import FeatureSplits

CANDIDATES = (16, 32, 64, 128, 256, 512, 1024, 2048)
TOLERANCE = 0.5  # validation accuracy points given up for a smaller projection


def candidates(dim: int) -> list[str]:
    """The values `choose` tries for `dim` features: the CANDIDATES below dim, then "all"."""
    return [str(k) for k in CANDIDATES if k < dim] + ["all"]


def choose(features: FeatureSplits, config) -> tuple[str, list[dict]]:
    """(the chosen value of config.components, one row per candidate with its twin's validation figures)."""
    from .train import train_reference

    rows = []
    for value in candidates(features.dim):
        run = train_reference(features, replace(config, components=value))
        rows.append(
            {
                "components": value,
                "val_acc": run.best["val_acc"],
                "val_loss": run.best["val_loss"],
                "best_epoch": run.best_epoch,
                "epochs_run": len(run.rows),
            }
        )
    best = max(row["val_acc"] for row in rows)
    return next(row["components"] for row in rows if row["val_acc"] >= best - TOLERANCE), rows
