"""The client's plaintext step: features of a frozen backbone, cached on disk by backbone weights and dataset,
and features files (.npz) from any extractor.

A feature is the backbone's pre-logits vector, ``forward_head(forward_features(x), pre_logits=True)``, on the
same normalised input the rest of encvit uses (``BatchPreprocess``). A features file holds float arrays
``train_x``, ``val_x``, ``test_x`` (n x d) and integer labels ``train_y``, ``val_y``, ``test_y`` (0..K-1); ``classes``
(K names) and anything else are optional. ``read_features_file`` checks all of it before any key is made.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..common.atomic import write_bytes
from ..common.errors import ConfigError
from ..data.datasets import ImageSet, load_dataset
from ..data.names import CIFAR10_CLASSES, COLOUR_DATASETS, DIGIT_CLASSES, FASHION_CLASSES
from ..models.backbones import create_backbone, describe, weights_hash
from ..models.preprocess import BatchPreprocess
from .head import FeatureSplits

CACHE_DIR = Path(os.environ.get("ENCVIT_CACHE", Path.home() / ".cache" / "encvit")) / "features"
NAMED_CLASSES = {
    "fashion5k": FASHION_CLASSES,
    "fashion55k": FASHION_CLASSES,
    "mnist5k": DIGIT_CLASSES,
    "cifar10": CIFAR10_CLASSES,
}
NAMED_CLASSES.update({colour: NAMED_CLASSES[grey] for colour, grey in COLOUR_DATASETS.items()})  # same labels


def class_count(dataset: str) -> int | None:
    """How many classes `dataset` has, known without reading an image (None: a folder that cannot be listed)."""
    if dataset in NAMED_CLASSES:
        return len(NAMED_CLASSES[dataset])
    if not dataset.startswith("folder:"):
        return None
    from torchvision.datasets.folder import find_classes

    root = Path(dataset[len("folder:") :])
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
        x = preprocess(images.images[start : start + batch_size])
        out.append(model.forward_head(model.forward_features(x), pre_logits=True).float().numpy())
    dim = model.num_features
    return np.concatenate(out) if out else np.zeros((0, dim), np.float32)


def dataset_features(
    backbone: str,
    dataset: str,
    limit: int | None = None,
    pretrained: bool = True,
    model: torch.nn.Module | None = None,
    cache: bool = True,
    progress: bool = False,
) -> FeatureSplits:
    """Features of every split of `dataset` under `backbone` (or an already built `model`), cached on disk."""
    model = model if model is not None else create_backbone(backbone, pretrained=pretrained)
    digest = weights_hash(model)
    safe = dataset.replace("/", "_").replace(":", "_")
    path = CACHE_DIR / f"{backbone}-{digest}-{safe}-{limit or 'all'}-v1.npz"
    if cache and path.exists():
        return FeatureSplits.load(path)
    geometry = describe(model, backbone)
    splits = load_dataset(dataset, image_size=geometry.image_size, channels=geometry.channels, limit=limit)
    parts = [
        (extract(model, getattr(splits, name), progress=progress), getattr(splits, name).labels.numpy())
        for name in ("train", "val", "test")
    ]
    features = FeatureSplits(
        *parts, classes=list(splits.classes), backbone=backbone, backbone_hash=digest, dataset=splits.name
    )
    if cache:
        write_bytes(path, features.to_bytes())
    return features


SPLITS = ("train", "val", "test")


def sha256_of(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_features_file(path: str | os.PathLike, features: FeatureSplits) -> Path:
    """Write `features` as a features file (.npz), atomically."""
    write_bytes(path, features.to_bytes())
    return Path(path)


def read_features_file(path: str | os.PathLike) -> FeatureSplits:
    """The splits in a features file, refused with one line naming the first problem (see the module doc)."""
    path = Path(path)
    name = f"features file {path}"
    if not path.is_file():
        raise ConfigError(f"{name} not found" if not path.exists() else f"{name} is not a file")
    if not zipfile.is_zipfile(path):  # a .npy, a pickle, text: np.load would accept or misname some of them
        raise ConfigError(f"{name} is not an .npz archive (numpy.savez of train_x, train_y, val_x, ...)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except ValueError as exc:  # numpy refuses object arrays without allow_pickle
        raise ConfigError(f"{name} holds a pickled or object array ({exc}); save plain numeric arrays") from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ConfigError(f"{name} is not a readable .npz archive ({type(exc).__name__}: {exc})") from exc
    missing = [f"{s}_{p}" for s in SPLITS for p in "xy" if f"{s}_{p}" not in arrays]
    if missing:
        raise ConfigError(f"{name} has no {', '.join(missing)} (it holds {', '.join(sorted(arrays)) or 'nothing'})")
    width = None
    for split in SPLITS:
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.ndim != 2 or x.dtype.kind != "f":
            raise ConfigError(
                f"{name}: {split}_x must be a 2-D float array (samples x features), got {x.dtype} of shape {x.shape}"
            )
        if y.ndim != 1 or y.dtype.kind not in "iu":
            raise ConfigError(
                f"{name}: {split}_y must be a 1-D integer array of labels, got {y.dtype} of shape {y.shape}"
            )
        if len(x) == 0:
            raise ConfigError(f"{name}: the {split} split is empty")
        if len(y) != len(x):
            raise ConfigError(f"{name}: {split}_x has {len(x)} rows but {split}_y has {len(y)} labels")
        if width is not None and x.shape[1] != width:
            raise ConfigError(f"{name}: {split}_x has {x.shape[1]} features but train_x has {width}")
        width = x.shape[1]
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        if bad:
            raise ConfigError(f"{name}: {split}_x holds {bad} NaN or infinite value(s)")
    classes = arrays.get("classes")
    if classes is not None and (classes.ndim != 1 or classes.dtype.kind not in "UO"):
        raise ConfigError(f"{name}: classes must be a 1-D array of names, got {classes.dtype} of shape {classes.shape}")
    k = len(classes) if classes is not None else int(max(arrays[f"{s}_y"].max() for s in SPLITS)) + 1
    if k < 2:
        raise ConfigError(f"{name} has {k} class(es); a softmax head needs at least 2")
    for split in SPLITS:
        y = arrays[f"{split}_y"]
        if y.min() < 0 or y.max() >= k:
            raise ConfigError(f"{name}: {split}_y holds labels outside 0..{k - 1} (from {y.min()} to {y.max()})")
    absent = sorted(set(range(k)) - set(np.unique(arrays["train_y"]).tolist()))
    if absent:
        raise ConfigError(f"{name}: class(es) {absent[:5]} never occur in train_y: the head cannot learn them")
    names = [str(c) for c in classes] if classes is not None else [str(i) for i in range(k)]

    def text_of(key: str) -> str:
        return str(arrays[key]) if key in arrays and arrays[key].ndim == 0 else ""

    return FeatureSplits(
        *((arrays[f"{s}_x"], arrays[f"{s}_y"].astype(np.int64)) for s in SPLITS),
        classes=names,
        backbone=text_of("backbone"),
        backbone_hash=text_of("backbone_hash"),
        dataset=text_of("dataset") or f"features:{path.name}",
    )
