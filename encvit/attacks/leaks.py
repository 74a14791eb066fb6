"""What the cipher gives away by construction, whatever the key.

Pixel shuffling only moves values inside a block, so every block keeps its multiset of values: its mean,
its histogram and its contrast are public. The block-mean thumbnail of an encrypted image is the plain
image at 1/M of its resolution (without block scrambling; with it, the same thumbnail shuffled).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import gammaln

from .blocks import to_blocks


def block_mean_thumbnail(images, block_size: int) -> np.ndarray:
    """The mean of every M x M x C block: N x H/M x W/M float images (a single image gives one thumbnail)."""
    single = isinstance(images, np.ndarray) and images.ndim in (2, 3)
    batch = [images] if single else images
    first = np.asarray(batch[0])
    h, w = first.shape[:2]
    means = to_blocks(batch, block_size).mean(axis=-1).reshape(-1, h // block_size, w // block_size)
    return means[0] if single else means


def block_histograms(images, block_size: int, bins: int = 16) -> np.ndarray:
    """Per-block histograms of values (N x G x bins): identical for a plain image and its pixel-shuffled version."""
    blocks = to_blocks(images, block_size)
    edges = np.linspace(0, 256, bins + 1)
    index = np.clip(np.digitize(blocks, edges) - 1, 0, bins - 1)
    counts = np.zeros(blocks.shape[:2] + (bins,), dtype=np.int64)
    for b in range(bins):  # bins is small; a loop over bins keeps memory at one block array
        counts[..., b] = (index == b).sum(axis=-1)
    return counts


def log2_factorial(n: int) -> float:
    """log2(n!) through the log-gamma function (exact to float precision for any n)."""
    return float(gammaln(n + 1) / math.log(2))


def key_space_bits(
    block_size: int,
    channels: int = 3,
    grid: tuple[int, int] | None = None,
    scramble: bool = False,
    neg_pos: bool = False,
) -> dict[str, float]:
    """Key-space size in bits of each part of a key: pixel shuffling, block scrambling, negative-positive."""
    n = channels * block_size * block_size
    bits = {"pixel shuffling": log2_factorial(n)}
    if scramble:
        if grid is None:
            raise ValueError("the block-scrambling key space depends on the grid: pass grid=(gh, gw)")
        bits["block scrambling"] = log2_factorial(grid[0] * grid[1])
    if neg_pos:
        bits["negative-positive"] = float(n)
    bits["total"] = sum(bits.values())
    return bits
