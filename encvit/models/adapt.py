"""Exact adaptation of a model to a key: the model that sees encrypted images as the original sees plain ones.

With x' = P x (pixel shuffling of every block), the patch embedding E' = E P^T, i.e. E' = E[:, permutation],
gives E' x' = E x for every block. Block scrambling moves whole patches, so the position embedding's patch rows
move with them (the class-token row stays). Negative-positive flips x -> 1 - x, which under normalisation with
mean = std = 0.5 is z -> -z: a sign flip of the matching columns of E.

This is exact only when normalisation is the same for every channel (mean = std = 0.5 here). With per-channel
statistics (ImageNet's mean/std) a value that moves from red to blue is normalised with blue's statistics, so
normalise(P x) != P normalise(x) and no column permutation can undo the difference.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..cipher.key import Key
from ..common.errors import KeyMismatchError
from .backbones import NORM_MEAN, NORM_STD


def adapt_to_key(model: nn.Module, key: Key, mean=NORM_MEAN, std=NORM_STD) -> nn.Module:
    """A copy of a timm ViT whose outputs on `key`-encrypted images equal `model`'s on plain images."""
    proj = model.patch_embed.proj
    out_dim, channels, m, _ = proj.weight.shape
    if (key.block_size, key.channels) != (m, channels):
        raise KeyMismatchError(
            f"key {key.fingerprint} has {key.block_size}x{key.block_size} blocks of "
            f"{key.channels} channels; the model's patches are {m}x{m} with {channels}"
        )
    if len(set(mean)) != 1 or len(set(std)) != 1:
        raise KeyMismatchError(
            "exact adaptation needs the same normalisation for every channel "
            f"(got mean {mean}, std {std}); use mean = std = 0.5"
        )
    adapted = copy.deepcopy(model)
    with torch.no_grad():
        weight = proj.weight.reshape(out_dim, -1)[:, torch.from_numpy(key.pixel_permutation)]
        if key.neg_pos is not None:
            weight = weight * torch.where(torch.from_numpy(key.neg_pos), -1.0, 1.0).to(weight)
        adapted.patch_embed.proj.weight.copy_(weight.reshape(proj.weight.shape))
        if key.scramble_secret is not None:
            grid_h, grid_w = adapted.patch_embed.grid_size
            order = torch.from_numpy(key.block_permutation(grid_h, grid_w))
            pos = adapted.pos_embed
            first_patch_row = pos.shape[1] - grid_h * grid_w  # 1 with a class-token row, 0 without
            pos[:, first_patch_row:] = pos[:, first_patch_row:][:, order].clone()
    return adapted
