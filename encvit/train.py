"""A training run: config in, self-describing run directory out.

    runs/NAME/config.json          the TrainConfig and what was derived from it (lr, classes, key fingerprint)
    runs/NAME/metrics.csv          per epoch: train loss, validation and test accuracy, seconds
    runs/NAME/adapter.safetensors  what the method trained, with metadata (see encvit.adapters)
    runs/NAME/result.json          final accuracies, trainable parameters, time, adapter size
    runs/NAME/versions.json        python, torch, timm, encvit

The key itself is never written; only its fingerprint.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import timm
import torch

from .adapters import AdapterInfo, load_classifier, save_adapter
from .atomic import write_text
from .backbones import create_backbone, describe, weights_hash
from .cipher import Key, fingerprint_of
from .data import Splits, load_dataset
from .errors import ConfigError, KeyMismatchError
from .loop import LoopSettings, distributed, evaluate, fit, pick_device
from .methods import LORA_METHODS, PATCH_EMBED_METHODS, check_method, count_trainable, prepare
from .preprocess import BatchPreprocess

# Chosen on the validation split of fashion5k by scripts/choose_lr.py (README: "Default learning rates").
DEFAULT_LR = {"full": 2e-3, "melo": 1e-2, "proposed": 1e-2, "head": 1e-2}


@dataclass
class TrainConfig:
    """Everything a run depends on; also the command line's defaults."""

    dataset: str = "fashion5k"
    method: str = "proposed"
    backbone: str = "encvit-tiny"
    weights: str | None = None
    pretrained: bool = True
    image_size: int | None = None
    key: str | None = None
    passphrase: str | None = None
    epochs: int = 6
    lr: float | None = None
    patch_lr: float | None = None
    batch_size: int = 128
    weight_decay: float = 0.01
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    rank: int = 4
    alpha: float = 8.0
    seed: int = 0
    limit: int | None = None
    amp: str = "auto"
    progress: bool = True
    test_every_epoch: bool = True
    out: str | None = None
    overwrite: bool = False
    extras: dict = field(default_factory=dict)

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]


def resolve_key(key_path: str | None, passphrase: str | None, block_size: int, channels: int) -> Key | None:
    """The key of a run: a key file, or one made from a passphrase with the backbone's patch size."""
    if key_path and passphrase:
        raise ConfigError("give either a key file or a passphrase, not both")
    if passphrase:
        return Key.generate(block_size, channels, passphrase=passphrase)
    if key_path:
        key = Key.load(key_path)
        if (key.block_size, key.channels) != (block_size, channels):
            raise KeyMismatchError(f"key {key.fingerprint} has {key.block_size}x{key.block_size} blocks of "
                                   f"{key.channels} channel(s); the backbone needs {block_size}x{block_size} "
                                   f"blocks of {channels} (its patch size): make one with `encvit keygen "
                                   f"--block-size {block_size} --channels {channels}`")
        return key
    return None


def versions() -> dict:
    """Library versions recorded with every run."""
    from . import __version__

    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "encvit": __version__}


def prepare_run_dir(out: str | os.PathLike | None, overwrite: bool) -> Path | None:
    """Refuse an existing run directory unless `overwrite`; nothing is deleted before training succeeds."""
    if out is None:
        return None
    path = Path(out)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise ConfigError(f"run directory {path} exists; pass --overwrite to replace it")
    return path


def train(config: TrainConfig, splits: Splits | None = None, backbone: torch.nn.Module | None = None) -> dict:
    """Fine-tune a backbone by `config`; returns the result and writes the run directory if `config.out`."""
    check_method(config.method)
    if config.patch_lr is not None and (config.method not in PATCH_EMBED_METHODS or config.patch_lr <= 0):
        raise ConfigError(f"--patch-lr must be positive and needs a method that trains the patch embedding "
                          f"({', '.join(PATCH_EMBED_METHODS)}), got {config.patch_lr:g} with {config.method}")
    out = prepare_run_dir(config.out, config.overwrite)
    rank, _ = distributed()
    torch.manual_seed(config.seed)
    model = backbone if backbone is not None else create_backbone(
        config.backbone, pretrained=config.pretrained, weights=config.weights, image_size=config.image_size)
    geometry = describe(model, config.backbone)
    if config.image_size and config.image_size != geometry.image_size:
        raise ConfigError(f"backbone {config.backbone} takes {geometry.image_size}x{geometry.image_size} images, "
                          f"not {config.image_size}")
    key = resolve_key(config.key, config.passphrase, geometry.patch_size, geometry.channels)
    splits = splits or load_dataset(config.dataset, geometry.image_size, geometry.channels, config.limit)
    backbone_hash = weights_hash(model)
    prepare(model, config.method, len(splits.classes), config.rank, config.alpha)
    preprocess = BatchPreprocess(geometry.image_size, geometry.channels, key, geometry.mean, geometry.std)
    settings = LoopSettings(epochs=config.epochs, lr=config.learning_rate, batch_size=config.batch_size,
                            weight_decay=config.weight_decay, warmup_epochs=config.warmup_epochs,
                            label_smoothing=config.label_smoothing, patch_lr=config.patch_lr, amp=config.amp,
                            seed=config.seed, progress=config.progress, test_every_epoch=config.test_every_epoch)
    staging = out.with_name(out.name + ".partial") if out and rank == 0 else None
    if staging:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    rows: list[dict] = []

    def record(row: dict) -> None:
        rows.append(row)
        if staging:
            write_text(staging / "metrics.csv", pd.DataFrame(rows).to_csv(index=False))

    start = time.perf_counter()
    fit(model, splits.train, splits.val, splits.test, preprocess, settings, on_epoch=record)
    seconds = time.perf_counter() - start
    info = AdapterInfo(method=config.method, backbone=config.backbone, backbone_hash=backbone_hash,
                       class_names=list(splits.classes), image_size=geometry.image_size,
                       patch_size=geometry.patch_size, channels=geometry.channels,
                       rank=config.rank if config.method in LORA_METHODS else 0,
                       alpha=config.alpha if config.method in LORA_METHODS else 0.0,
                       mean=list(geometry.mean), std=list(geometry.std),
                       key_fingerprint=key.fingerprint if key else "", dataset=splits.name)
    result = {"method": config.method, "dataset": splits.name, "setting": "encrypted" if key else "plain",
              "key_fingerprint": fingerprint_of(key), "val_acc": rows[-1]["val_acc"] if rows else float("nan"),
              "test_acc": rows[-1]["test_acc"] if rows else float("nan"), "trainable": count_trainable(model),
              "seconds": seconds, "lr": config.learning_rate, "seed": config.seed,
              "train_images": len(splits.train), "epochs": config.epochs}
    if staging:
        adapter = save_adapter(staging / "adapter.safetensors", model, info)
        result["adapter_bytes"] = adapter.stat().st_size
        derived = {"learning_rate": config.learning_rate, "classes": list(splits.classes),
                   "key_fingerprint": fingerprint_of(key), "image_size": geometry.image_size,
                   "patch_size": geometry.patch_size, "backbone_hash": backbone_hash}
        public = {k: v for k, v in asdict(config).items() if k != "passphrase"}
        public["passphrase_given"] = config.passphrase is not None
        write_text(staging / "config.json", json.dumps({**public, "derived": derived}, indent=1, default=str))
        write_text(staging / "result.json", json.dumps(result, indent=1))
        write_text(staging / "versions.json", json.dumps(versions(), indent=1))
        # The finished run replaces any old one in one rename: no half-written run directory is ever visible.
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    result["model"] = model
    result["metrics"] = rows
    return result


def evaluate_run(run: str | os.PathLike, dataset: str | None = None, key_path: str | None = None,
                 passphrase: str | None = None, allow_key_mismatch: bool = False, limit: int | None = None,
                 weights: str | None = None, split: str = "test") -> dict:
    """Accuracy of a run's adapter on a dataset, refusing a key other than the run's unless allowed."""
    run = Path(run)
    adapter = run / "adapter.safetensors" if run.is_dir() else run
    model, info = load_classifier(adapter, weights=weights)
    key = resolve_key(key_path, passphrase, info.patch_size, info.channels)
    trained_with = info.key_fingerprint or "plain"
    given = fingerprint_of(key)
    if given != trained_with and not allow_key_mismatch:
        raise KeyMismatchError(f"the adapter was trained with key {trained_with}, the given key is {given}; "
                               f"pass --allow-key-mismatch to see what a wrong key gives")
    splits = load_dataset(dataset or info.dataset, info.image_size, info.channels, limit)
    if list(splits.classes) != list(info.class_names):
        raise ConfigError(f"dataset {splits.name} has classes {splits.classes[:4]}..., the adapter "
                          f"{info.class_names[:4]}...")
    preprocess = BatchPreprocess(info.image_size, info.channels, key, tuple(info.mean), tuple(info.std))
    device = pick_device()
    model.to(device)
    preprocess.to(device)
    images = getattr(splits, split)
    accuracy = evaluate(model, images, preprocess, device)
    return {"accuracy": accuracy, "images": len(images), "dataset": splits.name, "split": split,
            "trained_key": trained_with, "given_key": given, "method": info.method}
