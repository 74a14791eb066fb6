"""The images the attacks are measured on, none of them in the repository.

- Grey, M = 4: Fashion-MNIST images at 32 x 32 x 3 as the shipped backbone sees them. The data owner's images
  are from the fine-tuning hold-out (fashion5k); the attacker's public references are Fashion-MNIST images of
  *other* classes from the pretraining part, so the attacker never holds an image of the victim's classes.
  With `colour`, the same images in their fixed colours (cfashion5k and cfashion55k, ``encvit.data.colour``).
- Colour, M = 16: the photographs that scikit-image and scikit-learn ship, each attacked with the others
  as references (cropped to multiples of 16).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

VICTIM_CLASSES = (0, 1, 2, 3, 4)  # T-shirt/top, Trouser, Pullover, Dress, Coat
REFERENCE_CLASSES = (5, 6, 7, 8, 9)  # Sandal, Shirt, Sneaker, Bag, Ankle boot


def as_backbone_input(images: np.ndarray, size: int = 32) -> np.ndarray:
    """N x H x W grey (repeated to 3 channels) or N x 3 x H x W colour uint8 images, resized to `size`
    (antialiased, as training does), channels last."""
    batch = torch.from_numpy(np.ascontiguousarray(images))
    batch = batch[:, None] if batch.ndim == 3 else batch
    resized = TF.resize(batch, [size, size], antialias=True).permute(0, 2, 3, 1).numpy()
    return np.repeat(resized, 3, axis=3) if resized.shape[3] == 1 else resized


@functools.lru_cache(maxsize=2)
def _fashion_pools(colour: bool = False):
    """(victim pool uint8 N x 28 x 28 or N x 3 x 28 x 28, its labels, reference pool): read once per process."""
    from ..data.datasets import load_dataset

    holdout = load_dataset("cfashion5k" if colour else "fashion5k").train
    pretraining = load_dataset("cfashion55k" if colour else "fashion55k").train
    victims = np.flatnonzero(np.isin(holdout.labels.numpy(), VICTIM_CLASSES))
    public = np.flatnonzero(np.isin(pretraining.labels.numpy(), REFERENCE_CLASSES))
    pick = (lambda images: images) if colour else (lambda images: images[:, 0])
    return (
        pick(holdout.images[victims]).numpy(),
        holdout.labels[victims].numpy(),
        pick(pretraining.images[public]).numpy(),
    )


def fashion_attack_sets(victims: int, references: int = 1000, seed: int = 0, colour: bool = False):
    """(victim images, their labels, reference images), 32 x 32 x 3: victims drawn (seeded) from fashion5k's
    training split of VICTIM_CLASSES, references from the pretraining images of REFERENCE_CLASSES (`colour`: the
    same images in their fixed colours)."""
    pool, labels, public = _fashion_pools(colour)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(pool), size=min(victims, len(pool)), replace=False))
    shown = np.sort(rng.choice(len(public), size=min(references, len(public)), replace=False))
    return as_backbone_input(pool[chosen]), labels[chosen], as_backbone_input(public[shown])


def crop_to_blocks(image: np.ndarray, block_size: int) -> np.ndarray:
    """The largest top-left crop whose sides are multiples of the block size."""
    return image[: image.shape[0] // block_size * block_size, : image.shape[1] // block_size * block_size]


def public_photographs(block_size: int = 16) -> dict[str, np.ndarray]:
    """The colour photographs scikit-image and scikit-learn ship, cropped to the block size."""
    from skimage import data
    from sklearn.datasets import load_sample_image

    photos = {
        "astronaut": data.astronaut(),
        "coffee": data.coffee(),
        "chelsea": data.chelsea(),
        "rocket": data.rocket(),
        "china": load_sample_image("china.jpg"),
        "flower": load_sample_image("flower.jpg"),
    }
    return {name: crop_to_blocks(photo, block_size) for name, photo in photos.items()}
