"""Figures and tables of an encrypted head run (for notebook 03 and the command line)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def plot_training_curves(encrypted: list[dict], plain: list[dict], title: str, exact: list[dict] | None = None) -> Figure:
    """Test accuracy and exact train loss per epoch: encrypted head (decrypted) vs plaintext, same polynomial.

    `exact`: rows of plaintext training with the true softmax, to show what the polynomial costs.
    """
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(9, 3.4))
    curves = [(plain, "-", "tab:blue", "plaintext, same polynomial"),
              (encrypted, "o--", "tab:orange", "CKKS-encrypted (decrypted each epoch)")]
    if exact is not None:
        curves.insert(0, (exact, ":", "tab:gray", "plaintext, exact softmax"))
    for ax, key, label in ((acc, "test_acc", "test accuracy (%)"), (loss, "train_loss", "train cross-entropy")):
        for rows, style, color, name in curves:
            ax.plot([r["epoch"] for r in rows], [r[key] for r in rows], style, color=color, label=name,
                    lw=2.5 if style == "-" else 1.5, alpha=0.6 if style == "-" else 1.0)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    acc.legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def wire_table(stats: dict) -> pd.DataFrame:
    """Bytes sent each way by kind of message, in MB."""
    rows = [{"direction": direction.replace("_", " "), "message": kind.replace("_", " "), "MB": size / 1e6}
            for direction, kinds in stats["bytes"].items() for kind, size in kinds.items()]
    return pd.DataFrame(rows)


def key_table(client, server) -> pd.DataFrame:
    """Which keys the client and the server hold (a `Client` and a `Server`)."""
    return pd.DataFrame({
        "client": {"secret key (decrypts)": "yes" if client.context.has_secret_key() else "no",
                   "relinearisation key": "made, sent", "rotation keys": "made, sent"},
        "server": {"secret key (decrypts)": "yes" if server.context.has_secret_key() else "no",
                   "relinearisation key": "yes" if server.context.has_relin_keys() else "no",
                   "rotation keys": "yes" if server.engine.rotation_keys is not None else "no"}})
