"""Key recovery from encrypted images alone, with plain reference images from any public source.

The same permutation acts on every block, so the correlation matrix of the C*M*M encrypted positions, taken
over all encrypted blocks, is a permuted copy of the correlation matrix of natural image blocks. Graph
matching of the two (scipy's `quadratic_assignment`) finds the permutation up to what the statistics cannot
see: the block's rotations and reflections and the order of colour channels. The smoothness of the decrypted
images across block boundaries picks among those. Negative-positive flips show as negative correlations;
block scrambling (one block order for every image) is undone by solving the jigsaw of all images at once.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.optimize import linear_sum_assignment, quadratic_assignment
from scipy.stats import wasserstein_distance
from tqdm.auto import tqdm

from ..cipher.images import as_batch
from ..cipher.key import Key
from ..common.errors import AttackError, ImageError
from .blocks import apply_to_blocks, from_blocks, to_blocks
from .jigsaw import edge_dissimilarities, position_prior, solve_jigsaw

# Smoothness is measured on at most this many encrypted images: enough to choose among 48 symmetries.
SMOOTHNESS_IMAGES = 256
# Random starts of the graph matching when not given: small blocks cost milliseconds a start, and a few starts
# miss the best match now and then (at M = 4, 2 starts failed on 2 of 12 draws that 8 starts solved); a start
# at M = 16 (768 positions) costs 20-60 s on 2 cores.
SMALL_BLOCK_STARTS, LARGE_BLOCK_STARTS, SMALL_BLOCK_VALUES = 8, 2, 256
PRIOR_WEIGHT = 0.1


def position_correlations(blocks: np.ndarray) -> np.ndarray:
    """The n x n correlation matrix of block positions over all rows of `blocks` (... x n); constant positions get 0."""
    rows = blocks.reshape(-1, blocks.shape[-1]).astype(np.float64)
    rows -= rows.mean(axis=0)
    std = np.sqrt((rows * rows).mean(axis=0))
    covariance = rows.T @ rows / len(rows)
    scale = np.outer(std, std)
    return np.divide(covariance, scale, out=np.zeros_like(covariance), where=scale > 0)


def block_symmetries(block_size: int, channels: int) -> list[np.ndarray]:
    """The 8 rotations and reflections of a block as position maps: natural-image statistics cannot tell them apart."""
    index = np.arange(channels * block_size * block_size).reshape(channels, block_size, block_size)
    maps = []
    for turns in range(4):
        turned = np.rot90(index, turns, axes=(1, 2))
        maps += [turned.reshape(-1), turned[:, :, ::-1].reshape(-1)]
    return maps


def channel_orders(block_size: int, channels: int) -> list[np.ndarray]:
    """Every order of the colour channels as a position map (one map for a single channel)."""
    index = np.arange(channels * block_size * block_size).reshape(channels, -1)
    return [index[list(order)].reshape(-1) for order in itertools.permutations(range(channels))]


def colour_statistics(rows: np.ndarray, channels: int) -> np.ndarray:
    """Per-channel mean and spread and the correlations between channels of plain block rows (... x C*M*M)."""
    values = rows.reshape(-1, channels, rows.shape[-1] // channels).transpose(1, 0, 2).reshape(channels, -1)
    values = values.astype(np.float64) / 255
    correlations = np.corrcoef(values)[np.triu_indices(channels, 1)] if channels > 1 else np.zeros(0)
    return np.concatenate([values.mean(axis=1), values.std(axis=1), np.nan_to_num(correlations)])


def _consistent_channels(perm: np.ndarray, enc_rows: np.ndarray, channels: int) -> np.ndarray:
    """Within each pixel, give each of its C encrypted positions the channel whose positions it resembles.

    Every position samples the whole image, so its mean and spread over all blocks are those of its channel:
    a per-pixel assignment on these signatures makes the channel order the same at every pixel."""
    n = len(perm)
    pixels = n // channels
    signature = np.stack([enc_rows.mean(axis=0), enc_rows.std(axis=0)], axis=1)
    perm = perm.copy()
    for _ in range(3):
        plain_slot = np.empty(n, dtype=np.int64)
        plain_slot[perm] = np.arange(n)  # plain_slot[i]: the encrypted position now at plain position i
        centres = np.stack(
            [np.median(signature[plain_slot[c * pixels : (c + 1) * pixels]], axis=0) for c in range(channels)]
        )
        for pixel in range(pixels):
            slots = np.arange(channels) * pixels + pixel
            positions = plain_slot[slots]
            cost = ((signature[positions][:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
            _, chosen = linear_sum_assignment(cost)
            perm[positions] = slots[chosen]
    return perm


def boundary_roughness(images: np.ndarray, block_size: int) -> float:
    """Mean absolute step across block boundaries (N x H x W x C): low when blocks are put together right."""
    x = images.astype(np.float32)
    m = block_size
    across = np.abs(x[:, :, m - 1 : -1 : m] - x[:, :, m::m]).mean() if x.shape[2] > m else 0.0
    down = np.abs(x[:, m - 1 : -1 : m] - x[:, m::m]).mean() if x.shape[1] > m else 0.0
    return float(across + down)


def _leading_signs(correlations: np.ndarray) -> np.ndarray:
    """+1/-1 per position from the leading eigenvector: natural-image correlations are positive, so a flipped
    position correlates negatively with every unflipped one (up to one global sign)."""
    _, vectors = np.linalg.eigh(correlations)
    signs = np.sign(vectors[:, -1])
    signs[signs == 0] = 1
    return signs


def _unflip(enc_rows: np.ndarray, ref_rows: np.ndarray, report: dict) -> tuple[np.ndarray, np.ndarray]:
    """Find the negative-positive mask: relative signs from correlations, the global sign from the value
    distribution (a flipped position's values look like 255 minus the reference's)."""
    signs = _leading_signs(position_correlations(enc_rows))
    reference = ref_rows[:: max(1, len(ref_rows) // 20_000)].reshape(-1)
    sample = enc_rows[:: max(1, len(enc_rows) // 2_000)]
    distances = []
    for flipped in (signs < 0, signs > 0):
        candidate = np.where(flipped, 255 - sample, sample)
        distances.append(wasserstein_distance(candidate.reshape(-1), reference))
    flips = (signs < 0, signs > 0)[int(np.argmin(distances))]
    report["neg_pos_value_distances"] = [float(d) for d in distances]
    return flips, np.where(flips, 255 - enc_rows, enc_rows)


def match_correlations(
    reference_corr: np.ndarray, encrypted_corr: np.ndarray, restarts: int = 2, seed: int = 0, progress: bool = False
) -> tuple[np.ndarray, float]:
    """Graph matching of the two correlation matrices: the permutation (encrypted position -> plain position)
    with the largest agreement over `restarts` randomised FAQ starts, and that agreement."""
    rng = np.random.default_rng(seed)
    best, best_score = None, -np.inf
    starts = tqdm(range(restarts), desc="matching correlations", unit="start", disable=not progress, leave=False)
    for start in starts:
        options = {
            "maximize": True,
            "rng": np.random.default_rng(rng.integers(2**31)),
            "tol": 1e-4,
            "maxiter": 60,
            "P0": "barycenter" if start == 0 else "randomized",
        }
        result = quadratic_assignment(reference_corr, encrypted_corr, method="faq", options=options)
        if result.fun > best_score:
            best, best_score = result.col_ind, result.fun
    # col_ind[i] is the encrypted position matched to plain position i; the key maps the other way.
    return np.argsort(best), float(best_score)


def _scaled_prior(plain_blocks: np.ndarray, reference_blocks: np.ndarray | None) -> np.ndarray | None:
    """The position prior of the jigsaw, weighted so that edges decide and the prior breaks their ties."""
    return None if reference_blocks is None else PRIOR_WEIGHT * position_prior(plain_blocks, reference_blocks)


def _is_grey(rows: np.ndarray, channels: int) -> bool:
    """Whether every pixel of these plain block rows has the same value in all channels."""
    values = rows.reshape(len(rows), channels, -1)
    return bool((values == values[:, :1]).all())


def _reference_rows(reference, block_size: int, channels: int) -> np.ndarray:
    rows = []
    for image in reference:
        image = np.asarray(image)
        image = image[:, :, None] if image.ndim == 2 else image
        if image.shape[2] != channels:
            if image.shape[2] != 1:
                raise ImageError(
                    f"a reference image has {image.shape[2]} channels; the encrypted images have {channels}"
                )
            image = np.repeat(image, channels, axis=2)
        rows.append(to_blocks([image], block_size).reshape(-1, channels * block_size * block_size))
    if not rows:
        raise AttackError("the ciphertext-only attack needs plain reference images (any public images of the kind)")
    return np.concatenate(rows)


def ciphertext_only(
    encrypted,
    reference,
    block_size: int,
    neg_pos: bool = False,
    scramble: bool = False,
    restarts: int | None = None,
    seed: int = 0,
    progress: bool = False,
    report: dict | None = None,
) -> Key:
    """The key from encrypted images (N x H x W x C, one size) and plain reference images of any source.

    `restarts` (default: 8 for blocks of at most 256 values, else 2) starts of the graph matching;
    `neg_pos` and `scramble` say which of the cipher's options the attacker assumes; the result is an ordinary
    key (with block scrambling: the block order for this grid size). `report` (a dict) receives diagnostics.
    """
    report = {} if report is None else report
    images = as_batch(encrypted)
    count, height, width, channels = images.shape
    if height % block_size or width % block_size:
        raise ImageError(f"image size {width}x{height} (WxH) is not a multiple of the block size {block_size}")
    n = channels * block_size * block_size
    if n < 2:
        raise AttackError("a block of one value has no permutation to recover")
    grid = (height // block_size, width // block_size)
    blocks = to_blocks(images, block_size).astype(np.int64)
    enc_rows = blocks.reshape(-1, n)
    ref_rows = _reference_rows(reference, block_size, channels)
    flips = np.zeros(n, dtype=bool)
    if neg_pos:
        flips, enc_rows = _unflip(enc_rows, ref_rows, report)
        blocks = enc_rows.reshape(blocks.shape)
    reference_corr = position_correlations(ref_rows)
    encrypted_corr = position_correlations(enc_rows)
    report["reference_correlations"], report["encrypted_correlations"] = reference_corr, encrypted_corr
    if restarts is None:
        restarts = SMALL_BLOCK_STARTS if n <= SMALL_BLOCK_VALUES else LARGE_BLOCK_STARTS
    matched, score = match_correlations(reference_corr, encrypted_corr, restarts, seed, progress)
    report["matching_score"] = score
    if channels > 1 and not _is_grey(ref_rows, channels):
        matched = _consistent_channels(matched, enc_rows, channels)
        # The channel order: the one whose colour statistics lie nearest the reference images'.
        reference_colour = colour_statistics(ref_rows, channels)
        distances = [
            np.sum((colour_statistics(apply_to_blocks(enc_rows, order[matched]), channels) - reference_colour) ** 2)
            for order in channel_orders(block_size, channels)
        ]
        report["channel_order_distances"] = [float(d) for d in distances]
        matched = channel_orders(block_size, channels)[int(np.argmin(distances))][matched]
    candidates = [symmetry[matched] for symmetry in block_symmetries(block_size, channels)]
    shown = blocks[:SMOOTHNESS_IMAGES]
    # Reference images of the encrypted images' size say what each grid position usually holds: the only
    # thing that tells an upright jigsaw from a turned or mirrored one.
    same_size = [r for r in reference if np.asarray(r).shape[:2] == (height, width)]
    same_size = _reference_rows(same_size, block_size, channels).reshape(len(same_size), -1, n) if same_size else None
    roughness = []
    for candidate in tqdm(
        candidates, desc="choosing the block's orientation", unit="candidate", disable=not progress, leave=False
    ):
        plain_blocks = apply_to_blocks(shown, candidate)
        if scramble:
            _, cost = solve_jigsaw(
                *edge_dissimilarities(plain_blocks, grid, block_size, channels),
                grid,
                _scaled_prior(plain_blocks, same_size),
                polish=False,
            )
            roughness.append(cost)
        else:
            roughness.append(boundary_roughness(from_blocks(plain_blocks, grid, block_size, channels), block_size))
    best = int(np.argmin(roughness))
    report["roughness"] = roughness
    perm = candidates[best]
    block_orders = None
    if scramble:  # polish only the chosen orientation's placement: swaps cost seconds per candidate
        plain_blocks = apply_to_blocks(shown, perm)
        order, _ = solve_jigsaw(
            *edge_dissimilarities(plain_blocks, grid, block_size, channels),
            grid,
            _scaled_prior(plain_blocks, same_size),
            polish=True,
        )
        block_orders = {grid: order}
    if np.array_equal(perm, np.arange(n)) and not flips.any() and block_orders is None:
        raise AttackError("the attack found no permutation: are these images encrypted?")
    return Key(block_size, channels, perm, flips if neg_pos else None, None, block_orders)
