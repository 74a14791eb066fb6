"""Does a shared adapter leak the key? Its patch embedding against the public pretrained one.

A model adapted exactly to a key has the patch embedding E' = E[:, pixel_permutation] (column k of E' is column
``pixel_permutation[k]`` of E, negated where the key flips): an assignment on column correlations reads the key
off it. A fine-tuned model only moves E some way from where it started, and the move carries the key too: the
gradient of column k is driven by the input at encrypted position k, i.e. by plain position
``pixel_permutation[k]``, and pushes E toward the tokens the pretrained model expects there. To first order
(tokens that should match E x) the update of column k follows (E S)[:, pixel_permutation[k]], where S is the
second-moment matrix of plain blocks: neighbouring pixels and the channels of a pixel move together. S comes
from public reference images or, without them, from a generic prior (correlation falling with distance).

Positions whose inputs are always equal (the channels of a grey image) get equal updates: no attack on the
weights can tell them apart, and none needs to, since any order among them decrypts those images exactly.
Block scrambling moves the position embedding's patch rows; a model that trains them (full fine-tuning) is read
the same way, row by row. MeLo (and a head alone) freezes the patch embedding: there is nothing to read.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..cipher.key import Key
from ..common.errors import AdapterError, AttackError
from .blocks import to_blocks

PATCH_WEIGHT = "patch_embed.proj.weight"
POSITIONS = "pos_embed"
# A trained weight whose every column correlates this well with one pretrained column is a permuted copy.
COPY_CORRELATION = 0.999
PRIOR_CORRELATION = 0.7  # the generic prior's correlation of neighbouring pixels


def _correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlations of the columns of a (F x n) with those of b (F x m): n x m; a zero column gives 0."""
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    norm_a, norm_b = np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=0)
    scale = np.outer(norm_a, norm_b)
    return np.divide(a.T @ b, scale, out=np.zeros(scale.shape), where=scale > 0)


def _assign(scores: np.ndarray, signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """The permutation (row k -> column perm[k]) of largest total score, and the sign of each matched score;
    `signed` False matches on absolute scores (a negative score is a flipped match)."""
    _, perm = linear_sum_assignment(scores if signed else np.abs(scores), maximize=True)
    return perm, np.sign(scores[np.arange(len(perm)), perm])


def block_prior(block_size: int, channels: int, correlation: float = PRIOR_CORRELATION) -> np.ndarray:
    """A generic second-moment matrix of natural image blocks: correlation**(city-block distance of the pixels),
    the same for every pair of channels (C*M*M x C*M*M, in (C, M, M) order)."""
    _, rows, cols = np.indices((channels, block_size, block_size)).reshape(3, -1)
    distance = np.abs(rows[:, None] - rows[None, :]) + np.abs(cols[:, None] - cols[None, :])
    return correlation**distance


def block_moments(images, block_size: int) -> np.ndarray:
    """The second-moment matrix of the blocks of plain images (H x W x C uint8 each, any sizes), in the model's
    input units (mean = std = 0.5: values from -1 to 1)."""
    rows = np.concatenate(
        [
            to_blocks([image], block_size).reshape(-1, image.shape[-1] * block_size**2)
            for image in map(np.asarray, images)
        ]
    )
    rows = rows.astype(np.float64) / 127.5 - 1.0
    return rows.T @ rows / len(rows)


def key_from_weights(
    trained: np.ndarray,
    pretrained: np.ndarray,
    block_size: int,
    channels: int,
    neg_pos: bool = False,
    moments: np.ndarray | None = None,
    trained_positions=None,
    pretrained_positions=None,
    grid: tuple[int, int] | None = None,
    report: dict | None = None,
) -> Key:
    """The key read from a trained patch-embedding weight against the pretrained one (each D x C x M x M or
    D x C*M*M); with both position embeddings' patch rows (G x D, row-major `grid`), the block order too."""
    trained, pretrained = (np.asarray(w, dtype=np.float64).reshape(len(w), -1) for w in (trained, pretrained))
    n = channels * block_size * block_size
    if trained.shape != pretrained.shape or trained.shape[1] != n:
        raise AttackError(
            f"the trained and pretrained patch embeddings must both be D x {n} "
            f"(C*M*M = {channels}*{block_size}*{block_size}); got {trained.shape} and {pretrained.shape}"
        )
    report = {} if report is None else report
    perm, signs = _assign(_correlations(trained, pretrained), signed=False)
    matched = np.abs(_correlations(trained, pretrained)[np.arange(n), perm])
    if matched.min() >= COPY_CORRELATION and not np.array_equal(perm, np.arange(n)):
        report["reading"] = "copy"  # the weight is the pretrained one with its columns permuted (and negated)
        if (signs < 0).any() and not neg_pos:
            raise AttackError(
                f"the patch embedding is the pretrained one with {int((signs < 0).sum())} column(s) "
                "negated: the key has negative-positive flips; ask for them (--neg-pos)"
            )
    else:
        report["reading"] = "update"
        moments = block_prior(block_size, channels) if moments is None else np.asarray(moments, np.float64)
        if moments.shape != (n, n):
            raise AttackError(f"the block moments must be {n} x {n}, got {moments.shape}")
        scores = _correlations(trained - pretrained, pretrained @ moments)
        perm, signs = _assign(scores, signed=not neg_pos)
        matched = scores[np.arange(n), perm]
    report["matched_correlation"] = float(np.abs(matched).mean())
    orders = None
    if trained_positions is not None:
        if grid is None:
            raise AttackError("the block order needs the grid (rows x columns of blocks)")
        orders = {tuple(grid): block_order_from_positions(trained_positions, pretrained_positions, report)}
    mask = signs < 0 if neg_pos else None
    if np.array_equal(perm, np.arange(n)) and orders is None:
        raise AttackError(
            "the patch embedding reads as the identity permutation: it shows no key "
            "(was the model trained on plain images?)"
        )
    return Key(block_size, channels, perm, mask, None, orders)


def block_order_from_positions(trained: np.ndarray, pretrained: np.ndarray, report: dict | None = None) -> np.ndarray:
    """Which plain block each encrypted block position holds, from the position embedding's patch rows (G x D):
    a permuted copy is matched row to row; a fine-tuned one by the update of each row toward its block's row."""
    trained, pretrained = np.asarray(trained, np.float64), np.asarray(pretrained, np.float64)
    if trained.shape != pretrained.shape or trained.ndim != 2:
        raise AttackError(f"the position embeddings must be G x D alike, got {trained.shape} and {pretrained.shape}")
    report = {} if report is None else report
    order, _ = _assign(_correlations(trained.T, pretrained.T), signed=True)
    if _correlations(trained.T, pretrained.T)[np.arange(len(order)), order].min() >= COPY_CORRELATION:
        report["block_reading"] = "copy"
        return order
    report["block_reading"] = "update"
    order, _ = _assign(_correlations((trained - pretrained).T, pretrained.T), signed=True)
    return order


def key_from_adapter(
    adapter_path: str | os.PathLike,
    backbone: torch.nn.Module | None = None,
    neg_pos: bool = False,
    scramble: bool = False,
    reference=None,
    report: dict | None = None,
) -> Key:
    """The key an adapter file (or run folder) gives away, against its public pretrained backbone (built from
    the adapter's metadata unless given); `reference`: public plain images (N x H x W x C uint8) for the block
    moments, else a generic prior; `scramble`: also read the block order from a trained position embedding."""
    from ..models.adapters import read_adapter
    from ..models.backbones import create_backbone, weights_hash

    path = Path(adapter_path)
    path = path / "adapter.safetensors" if path.is_dir() else path
    info, tensors = read_adapter(path)
    source = f"adapter file {path}"
    if not info.key_fingerprint:
        raise AttackError(f"{source} was trained on plain images: there is no key to recover")
    if PATCH_WEIGHT not in tensors:
        raise AttackError(
            f"{source} ({info.method}) holds no patch embedding: the method keeps it frozen, so "
            "the adapter cannot have learned the key"
        )
    if scramble and POSITIONS not in tensors:
        raise AttackError(
            f"{source} ({info.method}) holds no position embedding: the method keeps it frozen, so "
            "the block order cannot be read from it"
        )
    if backbone is None:
        backbone = create_backbone(info.backbone, image_size=info.image_size)
    if weights_hash(backbone) != info.backbone_hash:
        raise AdapterError(
            f"{source} was trained from backbone weights {info.backbone_hash}; the given backbone "
            f"is {weights_hash(backbone)}: the attack needs the same pretrained weights"
        )
    state = backbone.state_dict()
    pretrained = state[PATCH_WEIGHT].detach().cpu().numpy()
    trained = tensors[PATCH_WEIGHT].float().numpy()
    if trained.shape != pretrained.shape:
        raise AdapterError(
            f"{source}: its patch embedding is {tuple(trained.shape)}, the backbone's {tuple(pretrained.shape)}"
        )
    moments = None if reference is None else block_moments(reference, info.patch_size)
    positions = {}
    if scramble:
        grid = tuple(int(g) for g in backbone.patch_embed.grid_size)
        blocks = grid[0] * grid[1]
        positions = dict(
            trained_positions=tensors[POSITIONS].float().numpy()[0, -blocks:],
            pretrained_positions=state[POSITIONS].detach().cpu().numpy()[0, -blocks:],
            grid=grid,
        )
    return key_from_weights(
        trained, pretrained, info.patch_size, info.channels, neg_pos, moments, report=report, **positions
    )
