"""Colour versions of the grey offline data, where the cipher's cross-channel shuffle is real.

Every grey image g (0..255) becomes ``bg + (fg - bg) * g / 255`` per channel: a foreground and a background
colour of its own, drawn uniformly in RGB with at least ``MIN_CONTRAST`` between them so that the shape stays
visible. The draws come from a seeded generator that never sees the labels, so colour carries no label
information. The named datasets (``cfashion5k``, ``cmnist5k``) use one fixed draw per split; pretraining
(``RandomTint``) draws afresh every batch and sometimes lays the shape over a crop of a colour photograph.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

COLOUR_SEED = 2026
MIN_CONTRAST = 128.0  # Euclidean RGB distance between foreground and background, of at most 441


def draw_tints(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(foreground, background) colours, uint8 (n, 3) each, at least MIN_CONTRAST apart."""
    fg = np.empty((n, 3), np.uint8)
    bg = np.empty((n, 3), np.uint8)
    todo = np.arange(n)
    while len(todo):  # rejection sampling: about 1 in 4 pairs is too close and is drawn again
        f = rng.integers(0, 256, (len(todo), 3))
        b = rng.integers(0, 256, (len(todo), 3))
        ok = np.linalg.norm(f - b, axis=1) >= MIN_CONTRAST
        fg[todo[ok]], bg[todo[ok]] = f[ok], b[ok]
        todo = todo[~ok]
    return fg, bg


def tint(grey: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    """uint8 grey images (N, 1, H, W) -> uint8 colour images (N, 3, H, W) with per-image colours (N, 3)."""
    g = grey.float() / 255.0
    fg = fg.to(g.device, torch.float32).view(-1, 3, 1, 1)
    bg = bg.to(g.device, torch.float32).view(-1, 3, 1, 1)
    return (bg + (fg - bg) * g).round_().clamp_(0, 255).to(torch.uint8)


def split_tints(dataset: str, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed colours of a named colour dataset's split (seeded by COLOUR_SEED and the names only)."""
    rng = np.random.default_rng([COLOUR_SEED, zlib.crc32(f"{dataset}/{split}".encode())])
    return draw_tints(n, rng)


def colourise(images: torch.Tensor, dataset: str, split: str) -> torch.Tensor:
    """The fixed colour version of a grey split (N, 1, H, W) of `dataset`."""
    if images.shape[1] != 1:
        raise ValueError(f"colourise expects grey images (N, 1, H, W), got {tuple(images.shape)}")
    fg, bg = split_tints(dataset, split, len(images))
    return tint(images, torch.from_numpy(fg), torch.from_numpy(bg))


def photo_crops(count: int, size: int, seed: int = COLOUR_SEED) -> torch.Tensor:
    """`count` random uint8 crops (count, 3, size, size) of the colour photographs scikit-image and
    scikit-learn ship, each taken at a random scale: backgrounds with natural colour statistics."""
    from skimage import data
    from sklearn.datasets import load_sample_image
    from torchvision.transforms.v2 import functional as TF

    photos = [
        data.astronaut(),
        data.coffee(),
        data.chelsea(),
        data.rocket(),
        load_sample_image("china.jpg"),
        load_sample_image("flower.jpg"),
    ]
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        side = int(rng.integers(size, min(photo.shape[:2]) // 2 + 1))
        top = int(rng.integers(0, photo.shape[0] - side + 1))
        left = int(rng.integers(0, photo.shape[1] - side + 1))
        crop = torch.from_numpy(np.ascontiguousarray(photo[top : top + side, left : left + side])).permute(2, 0, 1)
        crops.append(TF.resize(crop, [size, size], antialias=True))
    return torch.stack(crops)


class RandomTint(torch.nn.Module):
    """Pretraining augmentation: grey batches become colour ones with fresh colours per image.

    A share `keep_grey` stays grey (so grey inputs keep working); of the rest, a share `photo` has a crop of
    a colour photograph as its background instead of a flat colour.
    """

    def __init__(self, size: int = 28, keep_grey: float = 0.2, photo: float = 0.3, crops: int = 1024, seed: int = 0):
        super().__init__()
        self.keep_grey, self.photo = keep_grey, photo
        self.register_buffer("crops", photo_crops(crops, size, COLOUR_SEED + seed), persistent=False)
        self.rng = np.random.default_rng(seed)

    def forward(self, grey: torch.Tensor) -> torch.Tensor:
        n = len(grey)
        fg, bg = (torch.from_numpy(c) for c in draw_tints(n, self.rng))
        out = tint(grey, fg, bg)
        g = grey.float() / 255.0
        with_photo = torch.from_numpy(self.rng.random(n) < self.photo).to(grey.device)
        if with_photo.any():
            crops = self.crops[torch.from_numpy(self.rng.integers(0, len(self.crops), int(with_photo.sum())))]
            crops = crops[..., : grey.shape[-2], : grey.shape[-1]].float()
            fg_ = fg[with_photo.cpu()].to(grey.device, torch.float32).view(-1, 3, 1, 1)
            gs = g[with_photo]
            out[with_photo] = (crops * (1 - gs) + fg_ * gs).round_().clamp_(0, 255).to(torch.uint8)
        grey_kept = torch.from_numpy(self.rng.random(n) < self.keep_grey).to(grey.device)
        out[grey_kept] = grey[grey_kept].expand(-1, 3, -1, -1)
        return out
