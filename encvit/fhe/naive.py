"""The baseline: TenSEAL's high-level vectors, one ciphertext per sample, per-sample dot products.

This is what one writes first: logits z_k = x . w_k (a dot product with rotations for each sample and class),
the polynomial softmax on the K single-value results, and the gradient e_k x accumulated sample by sample
(e_k is broadcast to d slots by a plaintext matrix product). TenSEAL rescales after every product, so one
iteration needs seven levels. Same schedule-free Nesterov step as ``head.nag_step``; for timing and checking.
"""

from __future__ import annotations

import time

import numpy as np
import tenseal as ts

from . import ckks
from .softmax import PolySoftmax

NAIVE_PRESET = "n16384-l7"


class NaiveTrainer:
    """Encrypted head training with one CKKSVector per sample and per class weight row."""

    def __init__(self, poly: PolySoftmax, lr: float, momentum: float, preset: str = NAIVE_PRESET):
        self.poly, self.lr, self.momentum = poly, lr, momentum
        start = time.perf_counter()
        self.context = ckks.new_context(ckks.get_params(preset))
        self.context.generate_galois_keys()  # TenSEAL's sum and matmul rotate by any power of two
        self.keygen_seconds = time.perf_counter() - start

    def encrypt_rows(self, rows: np.ndarray) -> list[ts.CKKSVector]:
        """One ciphertext per row."""
        return [ts.ckks_vector(self.context, row.tolist()) for row in rows]

    def step(
        self,
        x: list[ts.CKKSVector],
        y: list[list[ts.CKKSVector]],
        u: list[ts.CKKSVector],
        w_prev: list[ts.CKKSVector],
        dim: int,
    ) -> tuple[list, list]:
        """One Nesterov step over the samples `x` (labels `y`: K single-value ciphertexts per sample)."""
        # The broadcast of e_k to d slots also scales it by lr / batch: one product less.
        spread = np.full((1, dim), self.lr / len(x)).tolist()
        grads = None
        for xi, yi in zip(x, y, strict=False):
            probs = self.poly.apply([xi.dot(uk) for uk in u])
            terms = [(p - t).mm(spread) * xi for p, t in zip(probs, yi, strict=False)]
            grads = terms if grads is None else [g + t for g, t in zip(grads, terms, strict=False)]
        w = [uk - g for uk, g in zip(u, grads, strict=False)]
        u_next = [wk + (wk - wp) * self.momentum if self.momentum else wk for wk, wp in zip(w, w_prev, strict=False)]
        return w, u_next

    def decrypt(self, vectors: list[ts.CKKSVector]) -> np.ndarray:
        """Rows of decrypted values."""
        return np.array([v.decrypt() for v in vectors])


def time_naive_step(
    x: np.ndarray,
    y: np.ndarray,
    u: np.ndarray,
    w_prev: np.ndarray,
    poly: PolySoftmax,
    lr: float,
    momentum: float,
    preset: str = NAIVE_PRESET,
) -> dict:
    """Time one naive step on these samples (scaled features, one-hot labels, weights K x d).

    Returns seconds of server work per sample, the client's encryption seconds, and the decrypted result.
    """
    trainer = NaiveTrainer(poly, lr, momentum, preset)
    start = time.perf_counter()
    xs = trainer.encrypt_rows(x)
    ys = [trainer.encrypt_rows(row[:, None]) for row in y]
    us, ws = trainer.encrypt_rows(u), trainer.encrypt_rows(w_prev)
    encrypt_seconds = time.perf_counter() - start
    start = time.perf_counter()
    w_next, u_next = trainer.step(xs, ys, us, ws, x.shape[1])
    seconds = time.perf_counter() - start
    return {
        "seconds_per_sample": seconds / len(x),
        "samples": len(x),
        "step_seconds": seconds,
        "encrypt_seconds": encrypt_seconds,
        "keygen_seconds": trainer.keygen_seconds,
        "w": trainer.decrypt(w_next),
        "u": trainer.decrypt(u_next),
    }
