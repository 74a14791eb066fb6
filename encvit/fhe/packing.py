"""The dense packed layout of the encrypted head: features packed once, with no replication over classes.

A ciphertext has S slots. A *block* of P samples (a power of two) uses every slot of a ciphertext: slot
``A * b + a`` belongs to sample b (0 <= b < P) and *phase* a (0 <= a < A = S / P). Features are padded with
zeros to m, a power of two, and U = m * P / S rotation offsets cover them: the client packs its features twice,
once per pass, and never replicates them.

Forward, z_k = X w_k. Data ciphertext u (0 <= u < U) holds, at slot (b, a), ``x[b, (b + u + U a) mod m]``; the
weights of a class are one ciphertext V with ``V[A b' + a] = w[(b' + U a) mod m]``. Rotating V by A u moves its
block index by u (cyclically over the P blocks), so ``sum_u C_u * rot(V, A u)`` holds at (b, a) the part of
sample b's dot product over the features b + u + U a, and a sum over the A phases (log2 A rotations) completes
it at slot A b. The U rotations of V are done baby-step giant-step: U1 rotations of V and U2 of partial sums,
U1 * U2 = U, the client pre-rotating the data of each giant step (free for it).

Gradient, g_k = X^T e_k. The error of sample b is spread over the phases of its block (log2 A rotations) and
rotated by A u as above; data ciphertext u holds ``x[(b + u) mod P, (b - U a) mod m]``. Feature f then collects
its sum over all samples in the S / m slots of an arithmetic progression starting at slot A f (log2(S / m)
rotations): the gradient lands at slot A f, the *update form* in which the server keeps the weights it updates.

Two classes share one ciphertext as the real and imaginary parts of CKKS's complex slots: the data are real, so
one product serves a pair of classes (w_k + i w_k'), halving the products and rotations of both passes. The
client scales the forward data by 1/2 so that Z + conj(Z) and Z - conj(Z) are the pair's logits z_k and i z_k'.
The weights go back to the client at every refresh (TenSEAL cannot bootstrap), which repacks them from the
update form to the forward form: no rotation on the server converts between the two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..common.errors import ConfigError

FORWARD_SCALE = 0.5  # the forward data are halved: Z + conj(Z) = z_k, Z - conj(Z) = i z_k'


def pow2(n: int) -> int:
    """The smallest power of two >= n (at least 1)."""
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def log2(n: int) -> int:
    """log2 of a power of two."""
    return n.bit_length() - 1


@dataclass(frozen=True)
class Layout:
    """Where samples, features and class pairs sit in the slots, and the rotations the two passes use."""

    slots: int  # S
    num_features: int  # d + 1 (the bias column)
    num_classes: int  # K
    block: int  # P: samples per block, a power of two

    @property
    def width(self) -> int:
        """m: the features padded to a power of two."""
        return pow2(self.num_features)

    @property
    def phases(self) -> int:
        """A = S / P: slots per sample."""
        return self.slots // self.block

    @property
    def offsets(self) -> int:
        """U = m P / S: data ciphertexts per block and pass, and rotation offsets per class pair."""
        return self.width * self.block // self.slots

    @property
    def baby(self) -> int:
        """U1: rotations of the vector (weights or errors) per pair; U1 * U2 = U."""
        return 1 << (log2(self.offsets) + 1) // 2

    @property
    def giant(self) -> int:
        """U2: rotated partial sums per pair."""
        return self.offsets // self.baby

    @property
    def pairs(self) -> int:
        """Class pairs: ciphertexts per weight or error vector (real and imaginary parts)."""
        return (self.num_classes + 1) // 2

    def forward_steps(self) -> list[int]:
        """Rotation steps of the forward pass: baby steps, giant steps, the sum over phases."""
        a, u1 = self.phases, self.baby
        return (
            [a * s for s in range(1, u1)]
            + [a * u1 * s for s in range(1, self.giant)]
            + [1 << t for t in range(log2(a))]
        )

    def gradient_steps(self) -> list[int]:
        """Rotation steps of the gradient pass: spread over phases, baby and giant steps, the feature sums."""
        a, u = self.phases, self.offsets
        return (
            [-(1 << t) for t in range(log2(a))]
            + self.forward_steps()[: self.baby - 1 + self.giant - 1]
            + [(a * u + 1) << t for t in range(log2(a))]
            + [(a * self.width) << t for t in range(log2(self.block // self.width))]
        )

    def rotation_steps(self) -> list[int]:
        """Every rotation step the server uses (the client makes Galois keys for exactly these)."""
        return sorted({s % self.slots for s in self.forward_steps() + self.gradient_steps()} - {0})

    def describe(self) -> dict:
        """The layout's sizes, JSON-ready."""
        return {
            "slots": self.slots,
            "samples_per_block": self.block,
            "phases": self.phases,
            "features": self.num_features,
            "padded_features": self.width,
            "offsets": self.offsets,
            "baby_steps": self.baby,
            "giant_steps": self.giant,
            "classes": self.num_classes,
            "class_pairs": self.pairs,
            "data_ciphertexts_per_block": 2 * self.offsets + self.pairs,
            "weight_ciphertexts": self.pairs,
        }


def choose_layout(slots: int, num_features: int, num_classes: int, batch_size: int) -> Layout:
    """Blocks of the batch's size (a power of two), at least m (the gradient's sums need P >= m) and S / m."""
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    if num_classes < 2:
        raise ConfigError(f"a softmax head needs at least 2 classes, got {num_classes}")
    width = pow2(num_features)
    if width > slots:
        raise ConfigError(
            f"{num_features - 1} features (+ bias, padded to {width}) do not fit the {slots} slots of a "
            f"ciphertext: project them first (--components)"
        )
    if batch_size > slots:
        raise ConfigError(
            f"batch size {batch_size} is larger than the {slots} slots of a ciphertext: use --batch-size <= {slots}"
        )
    block = min(slots, max(pow2(batch_size), width, slots // width))
    return Layout(slots, num_features, num_classes, block)


# ---- plaintext packing (client side): gathers, no loops over samples --------------------------------------
def _padded(layout: Layout, x: np.ndarray) -> np.ndarray:
    if len(x) > layout.block or x.shape[1] != layout.num_features:
        raise ValueError(
            f"a block holds at most {layout.block} samples of {layout.num_features} features, got {x.shape}"
        )
    out = np.zeros((layout.block, layout.width))
    out[: len(x), : x.shape[1]] = x
    return out


def _giant_ordered(layout: Layout, vectors: np.ndarray) -> np.ndarray:
    """Data vector u = u1 + U1 u2 pre-rotated by -A U1 u2 (the giant step's rotation, undone by the server)."""
    u = np.arange(layout.offsets)
    shifts = layout.phases * layout.baby * (u // layout.baby)
    return np.stack([np.roll(v, s) for v, s in zip(vectors, shifts, strict=False)])  # roll by +s == rotate left by -s


def forward_data(layout: Layout, x: np.ndarray) -> np.ndarray:
    """The U forward data vectors (U x S) of a block of rows x, halved (see FORWARD_SCALE)."""
    p, a, u, m = layout.block, layout.phases, layout.offsets, layout.width
    b, ph, off = np.arange(p)[None, :, None], np.arange(a)[None, None, :], np.arange(u)[:, None, None]
    vectors = _padded(layout, x)[b, (b + off + u * ph) % m].reshape(u, -1) * FORWARD_SCALE
    return _giant_ordered(layout, vectors)


def gradient_data(layout: Layout, x: np.ndarray) -> np.ndarray:
    """The U gradient data vectors (U x S) of a block of rows x."""
    p, a, u, m = layout.block, layout.phases, layout.offsets, layout.width
    b, ph, off = np.arange(p)[None, :, None], np.arange(a)[None, None, :], np.arange(u)[:, None, None]
    vectors = _padded(layout, x)[(b + off) % p, (b - u * ph) % m].reshape(u, -1)
    return _giant_ordered(layout, vectors)


def _class_pairs(layout: Layout, rows: np.ndarray) -> np.ndarray:
    """K rows as pairs of complex rows (row 2j + i row 2j+1; a missing last row is zero)."""
    padded = np.zeros((2 * layout.pairs, rows.shape[1]))
    padded[: len(rows)] = rows
    return padded[0::2] + 1j * padded[1::2]


def forward_weights(layout: Layout, w: np.ndarray) -> np.ndarray:
    """Weights (K x (d + 1)) as one complex vector per class pair in the forward form:
    V[A b + a] = w[(b + U a) mod m]."""
    pairs = _class_pairs(layout, _pad_columns(layout, w))
    b, ph = np.arange(layout.block)[:, None], np.arange(layout.phases)[None, :]
    return pairs[:, (b + layout.offsets * ph) % layout.width].reshape(layout.pairs, -1)


def update_weights(layout: Layout, w: np.ndarray) -> np.ndarray:
    """Weights (K x (d + 1)) in the update form: w[f] (as pairs) at slot A f, zero elsewhere."""
    out = np.zeros((layout.pairs, layout.slots), complex)
    out[:, :: layout.phases][:, : layout.num_features] = _class_pairs(layout, w)
    return out


def read_weights(layout: Layout, vectors: np.ndarray) -> np.ndarray:
    """Weights (K x (d + 1)) from vectors in the update form (other slots are ignored)."""
    pairs = np.asarray(vectors)[:, :: layout.phases][:, : layout.num_features]
    return np.stack([pairs.real, pairs.imag], axis=1).reshape(2 * layout.pairs, -1)[: layout.num_classes]


def labels(layout: Layout, y: np.ndarray) -> np.ndarray:
    """One-hot rows y (n <= P x K) as class pairs at slot A b of each sample b, zero elsewhere."""
    out = np.zeros((layout.pairs, layout.slots), complex)
    out[:, :: layout.phases][:, : len(y)] = _class_pairs(layout, np.asarray(y, float).T)
    return out


def read_logits(layout: Layout, vectors: np.ndarray, count: int) -> np.ndarray:
    """Logits (count x K) from the forward pass's output (slot A b of each pair), undoing FORWARD_SCALE."""
    pairs = np.asarray(vectors)[:, :: layout.phases][:, :count] / FORWARD_SCALE
    return np.stack([pairs.real, pairs.imag], axis=1).reshape(2 * layout.pairs, count)[: layout.num_classes].T


def first_phase_mask(layout: Layout, value: complex = 1.0) -> np.ndarray:
    """`value` at slot A b of every block (phase 0), zero elsewhere."""
    mask = np.zeros(layout.slots, complex if np.iscomplexobj(value) else float)
    mask[:: layout.phases] = value
    return mask


def _pad_columns(layout: Layout, w: np.ndarray) -> np.ndarray:
    out = np.zeros((len(w), layout.width))
    out[:, : w.shape[1]] = w
    return out
