"""The head's plaintext arithmetic shared by every trainer: features, scaling, batches, NAG, accuracy.

The client standardises features and divides them by sqrt(d) (so a sample has norm about 1 and logits start
small, inside the polynomial softmax's range), then appends a constant 1 for the bias. Trained weights act on
these scaled features; ``FeatureScaler.fold`` turns them into weights and bias for the raw backbone features.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ..common.errors import ConfigError
from .softmax import PolySoftmax, softmax


@dataclass
class FeatureSplits:
    """Features (float32, n x d) and integer labels of train, validation and test, with the class names."""

    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    classes: list[str]
    backbone: str
    backbone_hash: str
    dataset: str = ""

    @property
    def dim(self) -> int:
        """Feature dimension."""
        return self.train[0].shape[1]

    def to_bytes(self) -> bytes:
        """The splits as .npz bytes (for a cache file)."""
        buffer = io.BytesIO()
        np.savez(
            buffer,
            classes=np.array(self.classes),
            backbone=np.array(self.backbone),
            backbone_hash=np.array(self.backbone_hash),
            dataset=np.array(self.dataset),
            **{
                f"{name}_{part}": getattr(self, name)[i]
                for name in ("train", "val", "test")
                for i, part in enumerate("xy")
            },
        )
        return buffer.getvalue()

    @classmethod
    def load(cls, path) -> FeatureSplits:
        """Splits written by `to_bytes`."""
        data = np.load(path, allow_pickle=False)
        return cls(
            *((data[f"{s}_x"], data[f"{s}_y"]) for s in ("train", "val", "test")),
            classes=[str(c) for c in data["classes"]],
            backbone=str(data["backbone"]),
            backbone_hash=str(data["backbone_hash"]),
            dataset=str(data["dataset"]),
        )


@dataclass
class FeatureScaler:
    """x -> ((x - mean) M / sqrt(k), 1), the server's input; `fold` maps trained weights back to raw x.

    M standardises every feature and, by default, whitens them (eigenvectors of the correlation matrix, eigenvalues
    plus a ridge): gradient descent on whitened features converges in tens of epochs instead of hundreds. With
    `components` k, M keeps only the k leading principal components (d x k): the server then trains on k + 1
    columns. The client does all this once, in plaintext, on its own training data, and folds M into the head.
    """

    mean: np.ndarray
    matrix: np.ndarray

    @classmethod
    def fit(
        cls, features: np.ndarray, whiten_ridge: float | None = None, components: int | None = None
    ) -> FeatureScaler:
        """Mean and M from the training features; `whiten_ridge` None standardises only (constant features: std 1);
        `components` None keeps every feature."""
        features = np.asarray(features, np.float64)
        mean, std = features.mean(axis=0), features.std(axis=0)
        std = np.where(std > 1e-8, std, 1.0)
        matrix = np.diag(1.0 / std)
        if whiten_ridge is not None or components is not None:
            z = (features - mean) / std
            eigenvalues, vectors = np.linalg.eigh(z.T @ z / max(len(z), 1))  # ascending
            eigenvalues = np.clip(eigenvalues, 0.0, None)
            if components is not None:  # PCA: the k leading directions, in the basis of the components
                eigenvalues, vectors = eigenvalues[::-1][:components], vectors[:, ::-1][:, :components]
                whitening = vectors if whiten_ridge is None else vectors / np.sqrt(eigenvalues + whiten_ridge)
            else:  # ZCA: whitened, in the basis of the features
                whitening = (vectors / np.sqrt(eigenvalues + whiten_ridge)) @ vectors.T
            matrix = matrix @ whitening
        return cls(mean, matrix)

    @property
    def dim(self) -> int:
        """Scaled features per sample (without the bias column)."""
        return self.matrix.shape[1]

    @property
    def factor(self) -> float:
        """1 / sqrt(k): scaled samples have a norm of about 1."""
        return 1.0 / np.sqrt(self.dim)

    def transform(self, features: np.ndarray) -> np.ndarray:
        """Scaled features with the bias column (n x (k + 1)), float64."""
        scaled = (np.asarray(features, np.float64) - self.mean) @ self.matrix * self.factor
        return np.concatenate([scaled, np.ones((len(scaled), 1))], axis=1)

    def fold(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(W, b) on raw features equal to `weights` (K x (k + 1)) on scaled ones: W x + b = weights [s(x); 1]."""
        w = weights[:, :-1] @ self.matrix.T * self.factor
        return w, weights[:, -1] - w @ self.mean


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Labels as rows of a K-column identity."""
    return np.eye(num_classes)[np.asarray(labels)]


def accuracy(weights: np.ndarray, x: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in % of the head `weights` on scaled features `x`."""
    if len(labels) == 0:
        return float("nan")
    return 100.0 * float(np.mean((x @ weights.T).argmax(axis=1) == labels))


def cross_entropy(weights: np.ndarray, x: np.ndarray, labels: np.ndarray) -> float:
    """Mean exact softmax cross-entropy of the head on scaled features (what the client can report)."""
    p = softmax(x @ weights.T)
    return float(-np.mean(np.log(p[np.arange(len(labels)), labels] + 1e-12)))


def validation_metrics(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy (%) and mean exact cross-entropy of decrypted validation logits: what the client decides on."""
    p = softmax(logits)
    return {
        "val_acc": 100.0 * float(np.mean(logits.argmax(axis=1) == labels)),
        "val_loss": float(-np.mean(np.log(p[np.arange(len(labels)), labels] + 1e-12))),
    }


def learning_rate(base: float, schedule: str, iteration: int, total: int) -> float:
    """The step size of `iteration` (0-based) out of `total`: "constant", or "cosine" decay from `base` to 0."""
    if schedule == "constant":
        return base
    if schedule == "cosine":
        return base * 0.5 * (1.0 + np.cos(np.pi * iteration / max(total, 1)))
    raise ConfigError(f"unknown learning-rate schedule {schedule!r}; choose constant or cosine")


@dataclass
class EarlyStopping:
    """The client's rule after each epoch's validation: keep the best epoch, stop after `patience` without one.

    `metric` is "val_loss" (lower is better; the default: smoother than accuracy on a few hundred samples) or
    "val_acc". Ties keep the earlier epoch.
    """

    patience: int
    metric: str = "val_loss"
    best_epoch: int = 0
    best_value: float = float("nan")
    since_best: int = 0

    def update(self, epoch: int, metrics: dict) -> tuple[bool, bool]:
        """(is `epoch` the best so far, should training stop) given its validation `metrics`."""
        value = metrics[self.metric]
        sign = -1.0 if self.metric == "val_loss" else 1.0
        if self.best_epoch == 0 or sign * value > sign * self.best_value:
            self.best_epoch, self.best_value, self.since_best = epoch, value, 0
            return True, False
        self.since_best += 1
        return False, self.since_best >= self.patience


def momentum_ratio(momentum: float) -> tuple[int, int]:
    """Integers (D, N) with N / D = 1 + momentum: the server multiplies by integers to save a level."""
    if not 0.0 <= momentum < 1.0:
        raise ConfigError(f"momentum must be in [0, 1), got {momentum}")
    fraction = Fraction(momentum).limit_denominator(100)
    if abs(float(fraction) - momentum) > 1e-12:
        raise ConfigError(f"momentum {momentum} must be a fraction with denominator at most 100 (e.g. 0.9)")
    return fraction.denominator, fraction.denominator + fraction.numerator


def nag_step(
    u: np.ndarray, w_prev: np.ndarray, x: np.ndarray, y: np.ndarray, poly: PolySoftmax, lr: float, momentum: float
) -> tuple[np.ndarray, np.ndarray]:
    """One Nesterov step at the look-ahead point u: w = u - lr * grad(u); u' = w + momentum * (w - w_prev)."""
    grad = (poly(x @ u.T) - y).T @ x / len(x)
    w = u - lr * grad
    return w, w + momentum * (w - w_prev)


@dataclass
class Schedule:
    """Training samples in fixed blocks (a block is one ciphertext's worth), batches of whole blocks per epoch.

    The client packs each block once; between epochs only the order of blocks changes, so nothing is
    re-encrypted. Every trainer (numpy, naive, packed) follows the same schedule.
    """

    blocks: list[np.ndarray]
    blocks_per_batch: int
    seed: int = 0

    @classmethod
    def make(cls, num_samples: int, block_size: int, batch_size: int, seed: int = 0) -> Schedule:
        """Shuffle once into blocks of `block_size`; a batch is max(1, batch_size // block_size) blocks."""
        order = np.random.default_rng(seed).permutation(num_samples)
        blocks = [order[i : i + block_size] for i in range(0, num_samples, block_size)]
        return cls(blocks, max(1, batch_size // block_size), seed)

    def batches(self, epoch: int) -> list[list[int]]:
        """The block indices of each batch of `epoch`."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.blocks))
        return [order[i : i + self.blocks_per_batch].tolist() for i in range(0, len(order), self.blocks_per_batch)]

    def samples(self, block_ids: list[int]) -> np.ndarray:
        """Sample indices of these blocks, in packing order."""
        return np.concatenate([self.blocks[b] for b in block_ids])
