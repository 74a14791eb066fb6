"""The numpy reference trainer: the encrypted trainer's exact arithmetic and decisions, without encryption.

Same softmax polynomial, same schedule of blocks and batches, same learning rates, same Nesterov steps and the
same early-stopping rule on the validation split: the encrypted run must reproduce its weights up to CKKS noise
and its per-epoch decisions exactly.
"""

from __future__ import annotations

import time

import numpy as np

from ..common.errors import EncvitError
from .head import EarlyStopping, Schedule, cross_entropy, nag_step, validation_metrics
from .softmax import ExactSoftmax, PolySoftmax

# Scaled features have a norm of about 1 and logits stay within a few units: weights this large mean divergence.
WEIGHT_LIMIT = 100.0


class TrainingDiverged(EncvitError):
    """The weights grew without bound: the learning rate is too large for the softmax polynomial."""


def check_weights(weights: np.ndarray, iteration: int, lr: float) -> None:
    """Raise TrainingDiverged when `weights` are not finite or exceed WEIGHT_LIMIT."""
    largest = float(np.abs(weights).max()) if weights.size else 0.0
    if not np.isfinite(largest) or largest > WEIGHT_LIMIT:
        raise TrainingDiverged(
            f"training diverged at iteration {iteration} (largest weight {largest:.3g} > "
            f"{WEIGHT_LIMIT:g}): lower --lr (now {lr:g})"
        )


def train_plain(
    x: np.ndarray,
    y: np.ndarray,
    softmax: PolySoftmax | ExactSoftmax,
    schedule: Schedule,
    epochs: int,
    learning_rates,
    momentum: float,
    validation: tuple[np.ndarray, np.ndarray],
    stopping: EarlyStopping,
    evaluate=None,
    on_epoch=None,
) -> tuple[np.ndarray, list[dict]]:
    """Train a head on scaled features `x` and one-hot `y`; returns the best epoch's weights (K x d) and one row
    per epoch run.

    `learning_rates(iteration)` gives each step's rate; after each epoch the validation logits go to `stopping`,
    which keeps the best epoch and says when to stop. `evaluate(weights)` adds reported metrics to a row (never
    used to decide); `on_epoch(row)` sees each row.
    """
    u = np.zeros((y.shape[1], x.shape[1]))
    w, best, rows, iteration = u.copy(), u.copy(), [], 0
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        for blocks in schedule.batches(epoch - 1):
            index = schedule.samples(blocks)
            lr = learning_rates(iteration)
            w, u = nag_step(u, w, x[index], y[index], softmax, lr, momentum)
            iteration += 1
            check_weights(u, iteration, lr)
        metrics = validation_metrics(validation[0] @ w.T, validation[1])
        is_best, stop = stopping.update(epoch, metrics)
        if is_best:
            best = w.copy()
        row = {
            "epoch": epoch,
            **metrics,
            "best": is_best,
            "seconds": time.perf_counter() - start,
            "train_loss": cross_entropy(w, x, y.argmax(1)),
            **(evaluate(w) if evaluate else {}),
        }
        rows.append(row)
        if on_epoch:
            on_epoch(row)
        if stop:
            break
    return best, rows
