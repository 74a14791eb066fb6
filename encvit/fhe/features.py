"""The client's plaintext step: features of a frozen backbone, cached on disk by backbone weights and dataset.

A feature is the backbone's pre-logits vector, ``forward_head(forward_features(x), pre_logits=True)``, on the
same normalised input the rest of encvit uses (``BatchPreprocess``).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..atomic import write_bytes
from ..backbones import create_backbone, describe, weights_hash
from ..data import CIFAR10_CLASSES, DIGIT_CLASSES, FASHION_CLASSES, ImageSet, load_dataset
from ..errors import ConfigError
from ..preprocess import BatchPreprocess
from .head import FeatureSplits

CACHE_DIR = Path(os.environ.get("ENCVIT_CACHE", Path.home() / ".cache" / "encvit")) / "features"
NAMED_CLASSES = {"fashion5k": FASHION_CLASSES, "fashion55k": FASHION_CLASSES, "mnist5k": DIGIT_CLASSES,
                 "cifar10": CIFAR10_CLASSES}


def class_count(dataset: str) -> int | None:
    """How many classes `dataset` has, known without reading an image (None: a folder that cannot be listed)."""
    if dataset in NAMED_CLASSES:
        return len(NAMED_CLASSES[dataset])
    if not dataset.startswith("folder:"):
        return None
    from torchvision.datasets.folder import find_classes

    root = Path(dataset[len("folder:"):])
    root = root / "train" if (root / "train").is_dir() and (root / "test").is_dir() else root  # as load_folder
    try:
        return len(find_classes(root)[0])
    except OSError:  # no class folders: the loader says so with its own message
        return None


def check_splits(features: FeatureSplits, limit: int | None = None) -> None:
    """Refuse splits that cannot train or score a head: an empty split, or fewer than two classes to train on."""
    empty = [name for name in ("train", "val", "test") if len(getattr(features, name)[1]) == 0]
    hint = f" with --limit {limit}" if limit else ""
    if empty:
        raise ConfigError(f"dataset {features.dataset} has no {' or '.join(empty)} images{hint}")
    if len(np.unique(features.train[1])) < 2:
        raise ConfigError(f"dataset {features.dataset} has fewer than two classes in its training split{hint}")


@torch.inference_mode()
def extract(model: torch.nn.Module, images: ImageSet, batch_size: int = 256, progress: bool = False) -> np.ndarray:
    """Pre-logits features of `images` (uint8 N x C x H x W) under a frozen timm ViT, as float32 (N x d)."""
    geometry = describe(model, "backbone")
    preprocess = BatchPreprocess(geometry.image_size, geometry.channels)
    model.eval()
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc="features", leave=False, disable=not progress):
        x = preprocess(images.images[start:start + batch_size])
        out.append(model.forward_head(model.forward_features(x), pre_logits=True).float().numpy())
    dim = model.num_features
    return np.concatenate(out) if out else np.zeros((0, dim), np.float32)


def dataset_features(backbone: str, dataset: str, limit: int | None = None, pretrained: bool = True,
                     model: torch.nn.Module | None = None, cache: bool = True, progress: bool = False) -> FeatureSplits:
    """Features of every split of `dataset` under `backbone` (or an already built `model`), cached on disk."""
    model = model if model is not None else create_backbone(backbone, pretrained=pretrained)
    digest = weights_hash(model)
    safe = dataset.replace("/", "_").replace(":", "_")
    path = CACHE_DIR / f"{backbone}-{digest}-{safe}-{limit or 'all'}-v1.npz"
    if cache and path.exists():
        return FeatureSplits.load(path)
    geometry = describe(model, backbone)
    splits = load_dataset(dataset, image_size=geometry.image_size, channels=geometry.channels, limit=limit)
    parts = [(extract(model, getattr(splits, name), progress=progress), getattr(splits, name).labels.numpy())
             for name in ("train", "val", "test")]
    features = FeatureSplits(*parts, classes=list(splits.classes), backbone=backbone, backbone_hash=digest,
                             dataset=splits.name)
    if cache:
        write_bytes(path, features.to_bytes())
    return features
