"""Images <-> the rows of values that the key permutes: one row of C*M*M values per block, in (C, M, M) order.

The attacks reason about blocks, never about the cipher's internals: a block row here is exactly what
``Key.pixel_permutation`` rearranges (encrypted row value k = plain row value ``pixel_permutation[k]``).
"""

from __future__ import annotations

import numpy as np

from ..cipher.images import as_batch
from ..common.errors import ImageError


def to_blocks(images, block_size: int) -> np.ndarray:
    """N x H x W x C images -> N x G x (C*M*M) block rows, blocks in row-major grid order."""
    x = as_batch(images)
    n, h, w, c = x.shape
    m = block_size
    if h % m or w % m:
        raise ImageError(f"image size {w}x{h} (WxH) is not a multiple of the block size {m}")
    gh, gw = h // m, w // m
    return x.reshape(n, gh, m, gw, m, c).transpose(0, 1, 3, 5, 2, 4).reshape(n, gh * gw, c * m * m)


def from_blocks(blocks: np.ndarray, grid: tuple[int, int], block_size: int, channels: int) -> np.ndarray:
    """The inverse of `to_blocks`: N x G x (C*M*M) -> N x H x W x C."""
    gh, gw = grid
    m, c = block_size, channels
    n = blocks.shape[0]
    return blocks.reshape(n, gh, gw, c, m, m).transpose(0, 1, 4, 2, 5, 3).reshape(n, gh * m, gw * m, c)


def apply_to_blocks(
    blocks: np.ndarray, pixel_permutation: np.ndarray, flips: np.ndarray | None = None, top: float = 255
) -> np.ndarray:
    """Decrypt block rows with a candidate pixel permutation (and flip mask): plain[perm[k]] = encrypted[k]."""
    rows = blocks if flips is None else np.where(flips, top - blocks, blocks)
    plain = np.empty_like(rows)
    plain[..., pixel_permutation] = rows
    return plain
