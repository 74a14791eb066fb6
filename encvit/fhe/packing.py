"""Packed layouts and the two packed products of the head, X W^T and X^T (P - Y), with few rotations.

A ciphertext has S slots. The layout puts three axes in it, outermost first: n samples (i), F features (f)
and Kp class slots (k), Kp the power of two >= K:

    slot(i, f, k) = (i * F + f) * Kp + k,        S = n * F * Kp.

- features: block r, group g holds x[i, g F + f] in every k slot (one ciphertext per group of F features);
- weights:  group g holds w[k, g F + f] in every i slot (replicated over the block's samples);
- labels and errors: y[i, k] in every f slot.

Then (in the spirit of HETAL's DiagABT and DiagATB, adapted to a scheme without bootstrapping):

- logits X W^T: sum over groups of x_g * w_g (products only: the sum over groups is an addition, and the
  products are relinearised once), then a sum over the F features of a group (log2 F rotations);
- gradient X^T E: sum over blocks of e * x_g (again one relinearisation per group), then a sum over the
  n samples. i is the outermost axis, so that sum is a cyclic rotate-and-sum (log2 n rotations) whose
  result is already replicated over i: exactly the weights' layout, with no mask and no extra level.

Rotations per iteration: blocks * (2 log2 F + log2 Kp + about log2 K) + groups * log2 n. Each iteration also
refreshes 2 * groups weight ciphertexts; ``choose_layout`` picks F to minimise both for a batch size.
Everything else is ciphertext products and additions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from .ops import Engine
from .softmax import PolySoftmax


# One weight group's refresh (decrypt, re-encrypt and move two ciphertexts) costs about as much as this many
# rotations (measured: ~0.1 s against ~15 ms per rotation at ring degree 16384 on 2 cores).
REFRESH_COST_IN_ROTATIONS = 7


def _pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


@dataclass(frozen=True)
class Layout:
    """How samples, features and classes share the slots of one ciphertext."""

    slots: int
    num_features: int  # including the bias column
    num_classes: int
    group: int  # F: features per ciphertext

    @property
    def class_slots(self) -> int:
        """Kp: the power of two >= K slots each sample's classes take."""
        return _pow2(self.num_classes)

    @property
    def block(self) -> int:
        """Samples per ciphertext (n)."""
        return self.slots // (self.group * self.class_slots)

    @property
    def groups(self) -> int:
        """Ciphertexts per block of samples (and of the weights)."""
        return math.ceil(self.num_features / self.group)

    def rotations(self, blocks_per_batch: int) -> int:
        """Rotations of one training iteration."""
        per_block = 2 * int(math.log2(self.group)) + int(math.log2(self.class_slots)) + _spread_cost(self.num_classes)
        return blocks_per_batch * per_block + self.groups * int(math.log2(self.block))

    def rotation_steps(self) -> list[int]:
        """Every rotation step the packed trainer uses (the client makes keys for exactly these)."""
        kp, f = self.class_slots, self.group
        steps = [kp << t for t in range(int(math.log2(f)))]                        # sum over features
        steps += _spread_steps(f, kp)                                              # replicate over features
        steps += [1 << t for t in range(int(math.log2(kp)))]                       # sum over classes
        steps += _spread_steps(self.num_classes, 1)                                # replicate over classes
        steps += [(f * kp) << t for t in range(int(math.log2(self.block)))]        # sum over samples
        return sorted(set(steps))

    def describe(self) -> dict:
        """The layout's sizes, JSON-ready."""
        return {"slots": self.slots, "samples_per_ciphertext": self.block, "features_per_ciphertext": self.group,
                "class_slots": self.class_slots, "ciphertexts_per_block": self.groups,
                "num_features": self.num_features, "num_classes": self.num_classes}


def _spread_cost(count: int) -> int:
    return len(_spread_steps(count, 1))


def _spread_steps(count: int, stride: int) -> list[int]:
    # Doubling windows 1, 2, 4, ... then one shifted copy per remaining set bit of `count`.
    steps, size = [], 1
    while size * 2 <= count:
        steps.append(-stride * size)
        size *= 2
    offset, rest = size, count - size
    while rest:
        size //= 2
        if rest >= size:
            steps.append(-stride * offset)
            offset += size
            rest -= size
    return steps


def choose_layout(slots: int, num_features: int, num_classes: int, batch_size: int) -> Layout:
    """The cheapest layout for `batch_size`: fewest rotations plus weight refreshes per iteration."""
    kp = _pow2(num_classes)
    if kp > slots:
        raise ConfigError(f"{num_classes} classes do not fit the {slots} slots of a ciphertext")
    if batch_size > slots:
        raise ConfigError(f"batch size {batch_size} is larger than the {slots} slots of a ciphertext: a batch "
                          f"must fit one ciphertext per feature group; use --batch-size <= {slots}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    candidates = []
    f = 1
    while f * kp <= slots and f <= _pow2(num_features):
        layout = Layout(slots, num_features, num_classes, f)
        # Prefer blocks no larger than a batch, then the fewest rotations.
        cost = layout.rotations(max(1, batch_size // layout.block)) + REFRESH_COST_IN_ROTATIONS * layout.groups
        candidates.append((layout.block > batch_size, cost, f, layout))
        f *= 2
    return min(candidates)[-1]


# ---- plaintext packing (client side): one reshape each, no loops over samples ---------------------------
def pack_features(layout: Layout, x: np.ndarray) -> np.ndarray:
    """Rows x (m <= n samples x d features) as `groups` slot vectors: x[i, g F + f] at slot(i, f, k)."""
    n, f, kp = layout.block, layout.group, layout.class_slots
    if len(x) > n or x.shape[1] != layout.num_features:
        raise ValueError(f"a block holds at most {n} samples of {layout.num_features} features, got {x.shape}")
    padded = np.zeros((n, layout.groups * f))
    padded[:len(x), :x.shape[1]] = x
    grouped = padded.reshape(n, layout.groups, f).transpose(1, 0, 2)
    return np.broadcast_to(grouped[..., None], (layout.groups, n, f, kp)).reshape(layout.groups, -1)


def pack_labels(layout: Layout, y: np.ndarray) -> np.ndarray:
    """One-hot rows y (m <= n x K) as one slot vector: y[i, k] at slot(i, f, k) for every f."""
    n, f, kp = layout.block, layout.group, layout.class_slots
    padded = np.zeros((n, kp))
    padded[:len(y), :layout.num_classes] = y
    return np.broadcast_to(padded[:, None, :], (n, f, kp)).reshape(-1)


def pack_weights(layout: Layout, w: np.ndarray) -> np.ndarray:
    """Weights (K x d) as `groups` slot vectors: w[k, g F + f] at slot(i, f, k) for every i."""
    n, f, kp = layout.block, layout.group, layout.class_slots
    padded = np.zeros((kp, layout.groups * f))
    padded[:layout.num_classes, :layout.num_features] = w
    grouped = padded.reshape(kp, layout.groups, f).transpose(1, 2, 0)
    return np.broadcast_to(grouped[:, None], (layout.groups, n, f, kp)).reshape(layout.groups, -1)


def unpack_weights(layout: Layout, vectors: np.ndarray) -> np.ndarray:
    """The inverse of `pack_weights`; the n replicas are averaged (their CKKS noise partly cancels)."""
    n, f, kp = layout.block, layout.group, layout.class_slots
    grouped = np.asarray(vectors).reshape(layout.groups, n, f, kp).mean(axis=1)
    return grouped.transpose(2, 0, 1).reshape(kp, -1)[:layout.num_classes, :layout.num_features]


def unpack_logits(layout: Layout, vector: np.ndarray, count: int | None = None) -> np.ndarray:
    """Logits z[i, k] read at slot(i, 0, k) from the output of `packed_logits`."""
    n, f, kp = layout.block, layout.group, layout.class_slots
    z = np.asarray(vector).reshape(n, f, kp)[:, 0, :layout.num_classes]
    return z[:count] if count is not None else z


def unpack_errors(layout: Layout, vector: np.ndarray, count: int | None = None) -> np.ndarray:
    """Errors e[i, k] read at slot(i, 0, k) from the output of `packed_error`."""
    return unpack_logits(layout, vector, count)


def _mask(layout: Layout, first_feature_only: bool, class_count: int, value: float = 1.0) -> np.ndarray:
    n, f, kp = layout.block, layout.group, layout.class_slots
    mask = np.zeros((n, f, kp))
    mask[:, :1 if first_feature_only else f, :class_count] = value
    return mask.reshape(-1)


# ---- packed products (server side) ----------------------------------------------------------------------
def _spread(engine: Engine, ct, count: int, stride: int):
    """Copy slot group 0 to groups 0..count-1 (stride apart) with right rotations; other slots must be zero."""
    windows, size = {1: ct}, 1
    while size * 2 <= count:
        doubled = engine.copy(windows[size])
        engine.add_(doubled, engine.rotate(windows[size], -stride * size))
        size *= 2
        windows[size] = doubled
    result, offset, rest = engine.copy(windows[size]), size, count - size
    while rest:
        size //= 2
        if rest >= size:
            engine.add_(result, engine.rotate(windows[size], -stride * offset))
            offset += size
            rest -= size
    return result


def packed_logits(engine: Engine, layout: Layout, x_cts: list, w_cts: list):
    """Logits of one block, z[i, k] at slot(i, 0, k) (other slots hold partial sums): one level.

    The products of all groups are summed before a single relinearisation and rescale.
    """
    acc = engine.multiply(x_cts[0], w_cts[0])
    for x, w in zip(x_cts[1:], w_cts[1:]):
        engine.add_(acc, engine.multiply(x, w))
    engine.relin_rescale_(acc)
    return engine.rotate_sum_(acc, [layout.class_slots << t for t in range(int(math.log2(layout.group)))])


def packed_error(engine: Engine, layout: Layout, logits, labels, poly: PolySoftmax, factor: float):
    """factor * (p(z) - y) of one block, replicated over features and zero on padding classes: five levels.

    With zr = s z (s^3 = factor * c), factor * (b z^2 + c z^3) = (zr^2) * (zr + factor * b / s^2), one product.
    """
    k, kp = layout.num_classes, layout.class_slots
    if poly.c <= 0:
        raise ConfigError("the packed trainer needs a cubic softmax with c > 0")
    s = (factor * poly.c) ** (1.0 / 3.0)
    zr = engine.multiply_plain(logits, _mask(layout, True, k, s), key=("first-feature", s))
    zr = _spread(engine, zr, layout.group, kp)                       # s z at every feature slot, 0 on padding
    z2 = engine.multiply(zr, zr)
    engine.relin_rescale_(z2)                                        # s^2 z^2
    shifted = engine.add_plain_(engine.copy(zr), _mask(layout, False, k, factor * poly.b / s ** 2),
                                key=("shift", factor * poly.b / s ** 2))
    cubic = engine.multiply(z2, shifted)
    engine.relin_rescale_(cubic)                                     # factor (b z^2 + c z^3)
    total = engine.rotate_sum_(engine.copy(cubic), [1 << t for t in range(int(math.log2(kp)))])
    mean = engine.multiply_plain(total, _mask(layout, False, 1, -1.0 / k), key="class-mean")
    error = _spread(engine, mean, k, 1)                              # -factor mean_j (b z_j^2 + c z_j^3)
    engine.add_(error, engine.align(cubic, 1.0, error))
    engine.add_(error, engine.align(zr, factor * poly.a / s, error, key=("linear", factor * poly.a / s)))
    engine.add_(error, engine.align(labels, -factor, error, key=("labels", factor)))
    return engine.add_plain_(error, _mask(layout, False, k, factor / k), key=("constant", factor / k))


def packed_gradient(engine: Engine, layout: Layout, errors: list, x_blocks: list[list]) -> list:
    """X^T E for a batch: one ciphertext per feature group, replicated over samples (the weights' layout).

    Per group, the products of every block are summed before one relinearisation; the sum over the samples
    of a ciphertext is then a cyclic rotate-and-sum along the outermost axis: one level.
    """
    steps = [(layout.group * layout.class_slots) << t for t in range(int(math.log2(layout.block)))]

    def group(g: int):
        acc = engine.multiply(errors[0], x_blocks[0][g])
        for e, xs in zip(errors[1:], x_blocks[1:]):
            engine.add_(acc, engine.multiply(e, xs[g]))
        engine.relin_rescale_(acc)
        return engine.rotate_sum_(acc, steps)

    return engine.map(group, range(layout.groups))
