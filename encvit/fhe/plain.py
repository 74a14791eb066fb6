"""The numpy reference trainer: the encrypted trainer's exact arithmetic, without encryption.

Same polynomial softmax, same schedule of blocks and batches, same Nesterov steps: the encrypted weights
must match these up to CKKS noise.
"""
from __future__ import annotations

import time

import numpy as np

from .head import Schedule, accuracy, cross_entropy, nag_step
from .softmax import ExactSoftmax, PolySoftmax


def train_plain(x: np.ndarray, y: np.ndarray, poly: PolySoftmax | ExactSoftmax, schedule: Schedule, epochs: int,
                lr: float, momentum: float, evaluate=None, on_epoch=None) -> tuple[np.ndarray, list[dict]]:
    """Train a head on scaled features `x` and one-hot `y`; returns the weights (K x d) and one row per epoch.

    `evaluate(weights)` returns extra metrics for a row (e.g. validation accuracy); `on_epoch(row)` sees each row.
    """
    u = np.zeros((y.shape[1], x.shape[1]))
    w = u.copy()
    rows = []
    for epoch in range(epochs):
        start = time.perf_counter()
        for blocks in schedule.batches(epoch):
            index = schedule.samples(blocks)
            w_new, u = nag_step(u, w, x[index], y[index], poly, lr, momentum)
            w = w_new
        row = {"epoch": epoch + 1, "seconds": time.perf_counter() - start,
               "train_loss": cross_entropy(w, x, y.argmax(1)), "train_acc": accuracy(w, x, y.argmax(1))}
        row.update(evaluate(w) if evaluate else {})
        rows.append(row)
        if on_epoch:
            on_epoch(row)
    return w, rows
