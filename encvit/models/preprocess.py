"""The batch pipeline on the training device: resize, expand channels, encrypt, normalise.

Order matters and follows the paper: the key acts on the image the backbone sees (after resizing),
and normalisation comes last, so that encryption stays an exact permutation of uint8 values.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.transforms.v2 import functional as TF

from .backbones import NORM_MEAN, NORM_STD


class BatchPreprocess(nn.Module):
    """uint8 (N, C, H, W) images -> normalised float inputs for a backbone, encrypted when a key is given."""

    def __init__(
        self,
        image_size: int,
        channels: int = 3,
        key=None,
        mean: tuple[float, ...] = NORM_MEAN,
        std: tuple[float, ...] = NORM_STD,
    ):
        super().__init__()
        self.image_size = image_size
        self.channels = channels
        self.key = key
        if key is not None:
            key.check_fits(image_size, image_size, channels)
        self.register_buffer("mean", torch.tensor(mean[:channels]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std[:channels]).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"BatchPreprocess expects uint8 images, got {images.dtype}")
        if images.shape[-2:] != (self.image_size, self.image_size):
            images = TF.resize(images, [self.image_size, self.image_size], antialias=True)
        if images.shape[1] != self.channels:
            images = images.expand(-1, self.channels, -1, -1) if images.shape[1] == 1 else images[:, : self.channels]
        if self.key is not None:
            images = self.key.encrypt(images)
        return (images.float() / 255.0 - self.mean) / self.std
