"""Key recovery from plaintexts: known pairs, or probe images the attacker chooses.

A permutation-only cipher with one key for every block and every image falls to very few plaintexts
(Li and Lo, arXiv 0912.1918): every block of a known image is one more sample of the same permutation.
"""

from __future__ import annotations

from collections import defaultdict
from math import gcd

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..cipher.images import as_batch
from ..cipher.key import Key
from ..common.errors import AttackError, ImageError
from .blocks import apply_to_blocks, from_blocks, to_blocks

# Auto-detection of the block size stops at blocks of this many values (M = 36 for colour): a cost matrix
# of n x n doubles beyond it takes gigabytes, and no ViT uses such patches.
MAX_DETECTED_BLOCK_VALUES = 4096
# Block scrambling is matched block to block (a G x G assignment): beyond this many blocks per image it is
# not tried by known_plaintext (a 512 x 512 image has 1,024 blocks at M = 16, 4,096 at M = 8).
MAX_SCRAMBLED_BLOCKS = 4_096  # a 4,096 x 4,096 assignment takes about a minute
PROBE_LEVELS = 128  # block identifiers stay below 128 so that v and 255 - v can be told apart


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """||a_k - b_i||^2 for the columns of a (F x n) and b (F x n): an n x n matrix."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.maximum((a * a).sum(0)[:, None] + (b * b).sum(0)[None, :] - 2 * a.T @ b, 0.0)


def _match_positions(encrypted: np.ndarray, plain: np.ndarray, allow_flips: bool):
    """Assign each encrypted position (column) a plain position by least squared distance, optionally flipped."""
    cost = _squared_distances(encrypted, plain)
    flips = np.zeros(cost.shape, dtype=bool)
    if allow_flips:
        flipped = _squared_distances(encrypted, 255 - plain.astype(np.int64))
        flips = flipped + 1e-6 < cost  # a tie keeps the unflipped reading
        cost = np.where(flips, flipped, cost)
    if cost.min(axis=1).max() > 0:  # some position matches no plain position: skip the costly assignment
        return None, None, np.array([np.inf])
    rows, cols = linear_sum_assignment(cost)
    return cols, flips[rows, cols], cost[rows, cols]


def _rows_with_a_twin(rows: np.ndarray) -> int:
    """How many rows (blocks, or positions) have an identical twin: such rows can trade places unseen."""
    _, counts = np.unique(rows, axis=0, return_counts=True)
    return int(counts[counts > 1].sum())


def _grid_groups(plain: list[np.ndarray], encrypted: list[np.ndarray], block_size: int):
    """Pairs grouped by grid size: {(gh, gw): (plain blocks N x G x n, encrypted blocks N x G x n)}."""
    groups = defaultdict(lambda: ([], []))
    for p, e in zip(plain, encrypted, strict=False):
        grid = (p.shape[0] // block_size, p.shape[1] // block_size)
        groups[grid][0].append(p)
        groups[grid][1].append(e)
    return {grid: (to_blocks(ps, block_size), to_blocks(es, block_size)) for grid, (ps, es) in groups.items()}


def _make_key(block_size, channels, perm, flips, orders, plain, encrypted) -> Key | None:
    """The key these parts make, if it is a valid key that decrypts every pair exactly."""
    n = len(perm)
    if np.array_equal(perm, np.arange(n)) and orders is None:
        return None  # the identity is not a key: this block size does not explain the pairs
    key = Key(block_size, channels, perm, flips if flips.any() else None, None, orders)
    return key if all(np.array_equal(key.decrypt(e), p) for p, e in zip(plain, encrypted, strict=False)) else None


def _recover_for_block_size(plain, encrypted, block_size: int, report: dict) -> Key | None:
    channels = plain[0].shape[2]
    groups = _grid_groups(plain, encrypted, block_size)
    n = channels * block_size * block_size
    all_plain = np.concatenate([p.reshape(-1, n) for p, _ in groups.values()])
    report["tied_positions"] = _rows_with_a_twin(all_plain.T)  # a position is a row of values here
    # Without block scrambling every block of every pair is one sample of the permutation.
    perm, flips, residual = _match_positions(
        np.concatenate([e.reshape(-1, n) for _, e in groups.values()]), all_plain, True
    )
    if residual.max() == 0:
        return _make_key(block_size, channels, perm, flips, None, plain, encrypted)
    if max(p.shape[1] for p, _ in groups.values()) > MAX_SCRAMBLED_BLOCKS:
        return None
    # With block scrambling: 1. a first permutation from each position's values sorted over the blocks of each
    # image (sorting makes it blind to where blocks went); 255 - v is compared in its own sorted order.
    sorted_plain = np.concatenate([np.sort(p, axis=1).reshape(-1, n) for p, _ in groups.values()])
    sorted_flipped = np.concatenate(
        [np.sort(255 - p.astype(np.int64), axis=1).reshape(-1, n) for p, _ in groups.values()]
    )
    sorted_enc = np.concatenate([np.sort(e, axis=1).reshape(-1, n) for _, e in groups.values()])
    cost, cost_flipped = _squared_distances(sorted_enc, sorted_plain), _squared_distances(sorted_enc, sorted_flipped)
    if np.minimum(cost, cost_flipped).min(axis=1).max() > 0:
        return None  # some position's values are not those of any plain position: not this block size
    flips0 = cost_flipped + 1e-6 < cost
    rows, perm0 = linear_sum_assignment(np.where(flips0, cost_flipped, cost))
    if np.where(flips0, cost_flipped, cost)[rows, perm0].max() > 0:
        return None  # some position's values are not those of any plain position: not this block size
    flips0 = flips0[rows, perm0]
    # 2. Where each encrypted block came from: decrypt blocks with that permutation, match them to plain blocks
    #    (on the first image of each grid size; identical plain blocks are a tie no attack can resolve).
    orders, aligned_plain, aligned_enc = {}, [], []
    for grid, (p, e) in groups.items():
        decrypted = apply_to_blocks(e[0].astype(np.int64), perm0, flips0)
        _, order = linear_sum_assignment(_squared_distances(decrypted.T, p[0].T))
        orders[grid] = order  # order[j]: the plain block that encrypted block j holds
        aligned_plain.append(p[:, order].reshape(-1, n))
        aligned_enc.append(e.reshape(-1, n))
    report["tied_blocks"] = sum(_rows_with_a_twin(groups[grid][0][0]) for grid in orders)
    # 3. The exact permutation from the aligned blocks.
    perm, flips, residual = _match_positions(np.concatenate(aligned_enc), np.concatenate(aligned_plain), True)
    if residual.max() > 0:
        return None
    return _make_key(block_size, channels, perm, flips, orders, plain, encrypted)


def _check_pairs(plain, encrypted) -> tuple[list[np.ndarray], list[np.ndarray]]:
    plain = [np.asarray(p) for p in plain]
    encrypted = [np.asarray(e) for e in encrypted]
    if not plain or len(plain) != len(encrypted):
        raise AttackError(f"known-plaintext needs pairs: got {len(plain)} plain and {len(encrypted)} encrypted images")
    for i, (p, e) in enumerate(zip(plain, encrypted, strict=False)):
        if p.shape != e.shape:
            raise ImageError(
                f"pair {i}: the plain image is {p.shape} and the encrypted one {e.shape}; "
                "a pair must have one size and channel count"
            )
    return plain, encrypted


def known_plaintext(plain, encrypted, block_size: int | None = None, report: dict | None = None) -> Key:
    """The key from plain/encrypted pairs (H x W x C uint8 each); the block size is found when not given.

    Every block of every pair is a sample of the same permutation, so one photograph usually gives all of it.
    Positions whose values agree in every given block ("ties": flat regions, the identical channels of a grey
    image) cannot be told apart by any attack on these pairs: the assignment solver picks one of them, which
    decrypts the given pairs exactly; `report["tied_positions"]` counts them, and more pairs resolve them.
    Negative-positive flips and block scrambling are detected and recovered (the block order per grid size).
    """
    plain, encrypted = _check_pairs(plain, encrypted)
    report = {} if report is None else report
    channels = plain[0].shape[2]
    side = 0
    for p in plain:
        side = gcd(side, gcd(p.shape[0], p.shape[1]))
    candidates = (
        [block_size]
        if block_size
        else [m for m in range(1, side + 1) if side % m == 0 and 2 <= channels * m * m <= MAX_DETECTED_BLOCK_VALUES]
    )
    for m in candidates:
        if side % m:
            raise ImageError(f"the images' sides are not multiples of the block size {m}")
        key = _recover_for_block_size(plain, encrypted, m, report)
        if key is not None:
            report["block_size"] = m
            return key
    tried = ", ".join(map(str, candidates)) or "none"
    raise AttackError(
        f"no block-wise key explains these pairs (block sizes tried: {tried}); are the encrypted "
        "images lossless (PNG) and paired with their own plain images?"
    )


# ---- chosen plaintext -------------------------------------------------------------------------------------
def make_probes(block_size: int, channels: int = 3, size: tuple[int, int] | None = None) -> list[np.ndarray]:
    """Two probe images whose encryptions reveal any key with C*M*M <= 65,536 values.

    Probe A: block 0 holds each position's index mod 256, block 1 its index // 256, and every other block b a
    constant 1 + b // 128. Probe B: every block b is the constant b mod 128. A constant c < 128 comes back as c
    or 255 - c, so the two probes also reveal the negative-positive mask (block 0 of B is 0 everywhere) and,
    from the constants, where every block went under block scrambling. `size` = (W, H), default two blocks;
    with block scrambling, use the size of the images to be attacked (the block order depends on the grid).
    """
    m, c = block_size, channels
    n = c * m * m
    if n > 65_536:
        raise AttackError(f"probes encode position indices in two bytes: C*M*M = {n} exceeds 65,536")
    width, height = size or (2 * m, m)
    if width % m or height % m or width * height < 2 * m * m:
        raise ImageError(
            f"probe size {width}x{height} must be a multiple of the block size {m} with at least two blocks"
        )
    grid = (height // m, width // m)
    blocks = grid[0] * grid[1]
    if blocks > PROBE_LEVELS * (PROBE_LEVELS - 1):
        raise AttackError(
            f"probes can label at most {PROBE_LEVELS * (PROBE_LEVELS - 1):,} blocks; {width}x{height} has {blocks:,}"
        )
    index = np.arange(n)
    ids = np.arange(blocks)
    probe_a = np.repeat((1 + ids // PROBE_LEVELS)[:, None], n, axis=1)
    probe_a[0], probe_a[1] = index % 256, index // 256
    probe_b = np.repeat((ids % PROBE_LEVELS)[:, None], n, axis=1)
    return [from_blocks(p[None].astype(np.uint8), grid, m, c)[0] for p in (probe_a, probe_b)]


def _probe_block_size(image: np.ndarray) -> int:
    """The block size of an encrypted probe B: the largest M whose blocks each hold one constant as {c, 255 - c}."""
    h, w = image.shape[:2]
    for m in sorted((m for m in range(1, gcd(h, w) + 1) if gcd(h, w) % m == 0), reverse=True):
        if h * w // (m * m) < 2:
            continue
        blocks = to_blocks([image], m)[0].astype(np.int64)
        folded = np.minimum(blocks, 255 - blocks)
        if (folded == folded[:, :1]).all() and folded.max() < PROBE_LEVELS:
            return m
    raise AttackError("these images are not encrypted probes made by `encvit attack chosen-plaintext --make-probes`")


def chosen_plaintext(encrypted_probes) -> Key:
    """The key from the encryptions of the two images of `make_probes` (in either order)."""
    probes = [np.asarray(p) for p in encrypted_probes]
    if len(probes) != 2:
        raise AttackError(f"chosen-plaintext needs the 2 encrypted probe images, got {len(probes)}")
    as_batch(probes)  # one size for both
    # Probe B is the one whose blocks are all constants (up to flips); try both orders.
    for probe_a, probe_b in (probes, probes[::-1]):
        try:
            return _decode_probes(probe_a, probe_b, _probe_block_size(probe_b))
        except AttackError:
            continue
    raise AttackError(
        "neither image is an encrypted probe B (all blocks constant): were the probes made by "
        "`encvit attack chosen-plaintext --make-probes`, encrypted losslessly, with one key?"
    )


def _decode_probes(probe_a: np.ndarray, probe_b: np.ndarray, m: int) -> Key:
    h, w, c = probe_b.shape
    grid = (h // m, w // m)
    a = to_blocks([probe_a], m)[0].astype(np.int64)
    b = to_blocks([probe_b], m)[0].astype(np.int64)
    n = c * m * m
    low_b = np.minimum(b, 255 - b)[:, 0]  # each encrypted block's constant in probe B
    zero_blocks = np.flatnonzero(low_b == 0)
    # Blocks whose B constant is 0 are the index block 0 and blocks 128, 256, ...; every one shows the mask.
    flips = b[zero_blocks[0]] == 255
    a = np.where(flips, 255 - a, a)
    a_constant = (a == a[:, :1]).all(axis=1)
    index_low = np.flatnonzero((low_b == 0) & ~a_constant)
    index_high = np.flatnonzero((low_b == 1) & (~a_constant | (a[:, 0] == 0)))
    if len(index_low) != 1 or len(index_high) != 1:
        raise AttackError("the encrypted probes do not decode: were both encrypted with the same key, losslessly?")
    perm = a[index_low[0]] + 256 * a[index_high[0]]
    # Where each block went: probe B gives b mod 128, probe A gives 1 + b // 128 (0 only for the index blocks).
    origin = low_b + PROBE_LEVELS * np.maximum(a[:, 0] - 1, 0)
    origin[index_low[0]], origin[index_high[0]] = 0, 1
    if not np.array_equal(np.sort(perm), np.arange(n)) or not np.array_equal(np.sort(origin), np.arange(len(origin))):
        raise AttackError("the encrypted probes do not decode to a permutation: were they encrypted with one key?")
    scrambled = not np.array_equal(origin, np.arange(len(origin)))
    return Key(m, c, perm, flips if flips.any() else None, None, {grid: origin} if scrambled else None)
