"""A training run: config in, self-describing run directory out.

    runs/NAME/config.json          the TrainConfig and what was derived from it (lr, classes, key fingerprint)
    runs/NAME/metrics.csv          per epoch: train loss, validation and test accuracy, seconds
    runs/NAME/adapter.safetensors  what the method trained, with metadata (see encvit.models.adapters)
    runs/NAME/result.json          final accuracies, trainable parameters, time, adapter size, where it ran
    runs/NAME/versions.json        python, torch, timm, encvit

The key itself is never written; only its fingerprint.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import timm
import torch

from ..cipher.key import Key, PerImageKeys, fingerprint_of
from ..common.atomic import output_lock, replace_folder, staging_of, write_text
from ..common.errors import (
    ConfigError,
    KeyMismatchError,
    check_options,
    check_output_path,
    integer,
    number,
    one_of,
    option,
    optional,
    path,
    read_json,
    refuse_other_settings,
    text,
)
from ..data.datasets import Splits, load_dataset
from ..data.names import dataset_name, is_colour_dataset
from ..models.adapters import AdapterInfo, load_classifier, save_adapter
from ..models.backbones import create_backbone, describe, embedded_weights_path, weights_hash
from ..models.methods import ALL_METHODS, LORA_METHODS, PATCH_EMBED_METHODS, count_trainable, prepare
from ..models.preprocess import BatchPreprocess
from .loop import LoopSettings, distributed, evaluate, fit, pick_device

# Chosen on the validation split of fashion5k by scripts/choose_lr.py (README: "Default learning rates").
DEFAULT_LR = {"full": 2e-3, "melo": 1e-2, "proposed": 1e-2, "head": 1e-2}


MAX_SEED = 2**32 - 1


@dataclass
class TrainConfig:
    """Everything a run depends on; also the command line's defaults. Values that cannot work are refused here."""

    dataset: str = option("fashion5k", dataset_name())
    method: str = option("proposed", one_of(*ALL_METHODS))
    backbone: str = option("encvit-tiny", text())
    weights: str | None = option(None, optional(path()))
    pretrained: bool = True
    image_size: int | None = option(None, optional(integer(1, 4096)))
    key: str | None = option(None, optional(path()))
    passphrase: str | None = option(None, optional(text()))
    per_image_keys: bool = False  # every image encrypted with a fresh key of its own (nothing to learn)
    epochs: int = option(6, integer(1))
    lr: float | None = option(None, optional(number(0, low_open=True)))
    patch_lr: float | None = option(None, optional(number(0, low_open=True)))
    batch_size: int = option(128, integer(1))
    weight_decay: float = option(0.01, number(0))
    warmup_epochs: float = option(1.0, number(0))
    label_smoothing: float = option(0.1, number(0, 1, high_open=True))
    rank: int = option(4, integer(1))
    alpha: float = option(8.0, number(0, low_open=True))
    seed: int = option(0, integer(0, MAX_SEED))
    limit: int | None = option(None, optional(integer(1)))
    amp: str = option("auto", one_of("auto", "off", "bf16"))
    progress: bool = True
    test_every_epoch: bool = True
    out: str | None = option(None, optional(path()))
    overwrite: bool = False
    extras: dict = field(default_factory=dict)

    def __post_init__(self):
        check_options(self)
        if self.patch_lr is not None and self.method not in PATCH_EMBED_METHODS:
            raise ConfigError(
                f"--patch-lr needs a method that trains the patch embedding "
                f"({', '.join(PATCH_EMBED_METHODS)}), got --method {self.method}"
            )
        if self.key and self.passphrase:
            raise ConfigError("give either --key or --passphrase, not both")
        if self.per_image_keys and (self.key or self.passphrase):
            raise ConfigError("--per-image-keys draws a key for every image: give no --key or --passphrase")
        if self.warmup_epochs > self.epochs:
            raise ConfigError(f"--warmup-epochs must be at most --epochs ({self.epochs}), got {self.warmup_epochs:g}")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]


# What decides where a run goes and what it shows while running, never its numbers; the key file and passphrase
# are compared by the key they give (its fingerprint), not by their text.
NOT_RESULT_SETTINGS = ("out", "overwrite", "progress", "test_every_epoch", "key", "passphrase")
# How a resume refuses the two settings that are not options.
SETTING_NAMES = {"key_fingerprint": "the key (fingerprint)", "backbone_hash": "the backbone's weights (hash)"}


def result_settings(config: TrainConfig, key_fingerprint: str | None = None, backbone_hash: str | None = None) -> dict:
    """Every setting of `config` that changes a run's numbers, with the key's fingerprint and the backbone's hash
    when given: what a resumed run must share with the run it continues."""
    settings = {k: v for k, v in asdict(config).items() if k not in NOT_RESULT_SETTINGS}
    extra = {"key_fingerprint": key_fingerprint, "backbone_hash": backbone_hash}
    return {**settings, **{k: v for k, v in extra.items() if v is not None}}


def finished_run(run: Path, settings: dict) -> bool:
    """True when `run` holds a complete run made with `settings` (see `result_settings`); ConfigError naming the
    settings when it was made with others, or when its config.json is damaged. False when there is none."""
    if not (run / "result.json").exists():
        return False
    fix = f"remove the run folder {run} to train it again"
    read_json(run / "result.json", fix=fix)
    saved = read_json(run / "config.json", fix=fix)
    derived = saved.get("derived") if isinstance(saved.get("derived"), dict) else {}
    saved = {**saved, **{k: derived[k] for k in ("key_fingerprint", "backbone_hash") if k in derived}}
    refuse_other_settings(saved, settings, f"run {run}", SETTING_NAMES)
    return True


def resolve_key(key_path: str | None, passphrase: str | None, block_size: int, channels: int) -> Key | None:
    """The key of a run: a key file, or one made from a passphrase with the backbone's patch size."""
    if key_path and passphrase:
        raise ConfigError("give either a key file or a passphrase, not both")
    if passphrase:
        return Key.generate(block_size, channels, passphrase=passphrase)
    if key_path:
        key = Key.load(key_path)
        if (key.block_size, key.channels) != (block_size, channels):
            raise KeyMismatchError(
                f"key {key.fingerprint} has {key.block_size}x{key.block_size} blocks of "
                f"{key.channels} channel(s); the backbone needs {block_size}x{block_size} "
                f"blocks of {channels} (its patch size): make one with `encvit keygen "
                f"--block-size {block_size} --channels {channels}`"
            )
        return key
    return None


GREY_BACKBONE, COLOUR_BACKBONE = "encvit-tiny", "encvit-tiny-colour"


def colour_backbone_note(datasets, backbone: str, pretrained: bool = True, weights: str | None = None) -> str | None:
    """A one-line note when colour datasets are trained on the grey-pretrained shipped backbone, else None."""
    colour = [name for name in ([datasets] if isinstance(datasets, str) else datasets) if is_colour_dataset(name)]
    if not colour or backbone != GREY_BACKBONE or not pretrained or weights is not None:
        return None
    missing = (
        ""
        if embedded_weights_path(COLOUR_BACKBONE).exists()
        else f" (its weights are not shipped yet: make them with `encvit pretrain --name {COLOUR_BACKBONE}`)"
    )
    return (
        f"note: {', '.join(colour)} {'is a colour dataset' if len(colour) == 1 else 'are colour datasets'} "
        f"and {GREY_BACKBONE} was pretrained on grey images; --backbone {COLOUR_BACKBONE} was pretrained on "
        f"colour ones{missing}"
    )


def inside_task() -> bool:
    """True in a Ray task (a run this module sent to the cluster)."""
    ray = sys.modules.get("ray")  # loaded only where Ray is used; not imported for this question
    return ray is not None and ray.is_initialized() and ray.get_runtime_context().get_task_id() is not None


def ran_on() -> dict:
    """Where this process trains: the engine (ray in a task sent to a Ray cluster, else local), the machine and
    its torch threads."""
    return {"engine": "ray" if inside_task() else "local", "node": platform.node(), "threads": torch.get_num_threads()}


def versions() -> dict:
    """Library versions recorded with every run."""
    from .. import __version__

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "encvit": __version__,
    }


def prepare_run_dir(out: str | os.PathLike | None, overwrite: bool, flag: str = "--out") -> Path | None:
    """Refuse an existing run directory unless `overwrite`, and a path that cannot be written; deletes nothing."""
    if out is None:
        return None
    path = check_output_path(out, flag, folder=True)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise ConfigError(f"run directory {path} exists; pass --overwrite to replace it")
    return path


def check_splits(splits: Splits, limit: int | None) -> None:
    """Refuse a dataset (or a --limit) that leaves a split without images: the run would report nan."""
    empty = [name for name in ("train", "val", "test") if len(getattr(splits, name)) == 0]
    if empty:
        hint = (
            f" (--limit {limit} is below one image per class: use at least {len(splits.classes)})"
            if limit and limit < len(splits.classes)
            else ""
        )
        raise ConfigError(f"dataset {splits.name} has no {' or '.join(empty)} images{hint}")


def train(config: TrainConfig, splits: Splits | None = None, backbone: torch.nn.Module | None = None) -> dict:
    """Fine-tune a backbone by `config`; returns the result and writes the run directory if `config.out`.

    Everything is checked before the data is loaded; a failure later (an error, Ctrl-C) removes RUN.partial.
    While it runs, the run directory is locked: another command writing it is refused.
    """
    rank, _ = distributed()
    locked = check_output_path(config.out, "--out", folder=True) if config.out and rank == 0 else None
    with output_lock(locked) if locked else contextlib.nullcontext():
        return _train(config, rank, splits, backbone)


def _train(config: TrainConfig, rank: int, splits: Splits | None, backbone: torch.nn.Module | None) -> dict:
    out = prepare_run_dir(config.out, config.overwrite)
    torch.manual_seed(config.seed)
    model = (
        backbone
        if backbone is not None
        else create_backbone(
            config.backbone, pretrained=config.pretrained, weights=config.weights, image_size=config.image_size
        )
    )
    geometry = describe(model, config.backbone)
    if config.image_size and config.image_size != geometry.image_size:
        raise ConfigError(
            f"backbone {config.backbone} takes {geometry.image_size}x{geometry.image_size} images, "
            f"not {config.image_size}"
        )
    width = model.patch_embed.proj.out_channels
    if config.method in LORA_METHODS and config.rank > width:
        raise ConfigError(f"--rank must be at most the backbone's width ({width}), got {config.rank}")
    key = (
        PerImageKeys(geometry.patch_size, geometry.channels, config.seed)
        if config.per_image_keys
        else resolve_key(config.key, config.passphrase, geometry.patch_size, geometry.channels)
    )
    splits = splits or load_dataset(config.dataset, geometry.image_size, geometry.channels, config.limit)
    check_splits(splits, config.limit)
    backbone_hash = weights_hash(model)
    prepare(model, config.method, len(splits.classes), config.rank, config.alpha)
    preprocess = BatchPreprocess(geometry.image_size, geometry.channels, key, geometry.mean, geometry.std)
    settings = LoopSettings(
        epochs=config.epochs,
        lr=config.learning_rate,
        batch_size=config.batch_size,
        weight_decay=config.weight_decay,
        warmup_epochs=config.warmup_epochs,
        label_smoothing=config.label_smoothing,
        patch_lr=config.patch_lr,
        amp=config.amp,
        seed=config.seed,
        progress=config.progress,
        test_every_epoch=config.test_every_epoch,
    )
    staging = staging_of(out) if out and rank == 0 else None
    try:
        return _fit_and_write(config, model, splits, key, geometry, backbone_hash, preprocess, settings, out, staging)
    except BaseException:
        if staging:  # an error or Ctrl-C after work started: leave nothing half-written behind
            shutil.rmtree(staging, ignore_errors=True)
        raise


def _fit_and_write(config, model, splits, key, geometry, backbone_hash, preprocess, settings, out, staging) -> dict:
    """Train, then write the run into `staging` and swap it in for `out` by renames (`replace_folder`)."""
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
    info = AdapterInfo(
        method=config.method,
        backbone=config.backbone,
        backbone_hash=backbone_hash,
        class_names=list(splits.classes),
        image_size=geometry.image_size,
        patch_size=geometry.patch_size,
        channels=geometry.channels,
        rank=config.rank if config.method in LORA_METHODS else 0,
        alpha=config.alpha if config.method in LORA_METHODS else 0.0,
        mean=list(geometry.mean),
        std=list(geometry.std),
        key_fingerprint=key.fingerprint if key else "",
        dataset=splits.name,
    )
    result = {
        "method": config.method,
        "dataset": splits.name,
        "setting": "encrypted" if key else "plain",
        "key_fingerprint": fingerprint_of(key),
        "val_acc": rows[-1]["val_acc"] if rows else float("nan"),
        "test_acc": rows[-1]["test_acc"] if rows else float("nan"),
        "trainable": count_trainable(model),
        "seconds": seconds,
        "threads": torch.get_num_threads(),
        "lr": config.learning_rate,
        "seed": config.seed,
        "train_images": len(splits.train),
        "epochs": config.epochs,
        "ran_on": ran_on(),
    }
    if staging:
        adapter = save_adapter(staging / "adapter.safetensors", model, info)
        result["adapter_bytes"] = adapter.stat().st_size
        derived = {
            "learning_rate": config.learning_rate,
            "classes": list(splits.classes),
            "key_fingerprint": fingerprint_of(key),
            "image_size": geometry.image_size,
            "patch_size": geometry.patch_size,
            "backbone_hash": backbone_hash,
        }
        public = {k: v for k, v in asdict(config).items() if k != "passphrase"}
        public["passphrase_given"] = config.passphrase is not None
        write_text(staging / "config.json", json.dumps({**public, "derived": derived}, indent=1, default=str))
        write_text(staging / "result.json", json.dumps(result, indent=1))
        write_text(staging / "versions.json", json.dumps(versions(), indent=1))
        # The finished run replaces any old one by renames: a half-written run directory is never visible, and a
        # kill at any instant leaves the old run or the new one.
        replace_folder(staging, out)
    result["model"] = model
    result["metrics"] = rows
    return result


@dataclass
class EvaluateConfig:
    """The options of `encvit evaluate`, checked when made."""

    run: str = option("", path(), flag="RUN")
    dataset: str | None = option(None, optional(dataset_name()))
    key: str | None = option(None, optional(path()))
    passphrase: str | None = option(None, optional(text()))
    allow_key_mismatch: bool = False
    limit: int | None = option(None, optional(integer(1)))
    weights: str | None = option(None, optional(path()))
    split: str = option("test", one_of("train", "val", "test"))

    def __post_init__(self):
        check_options(self)


def evaluate_run(
    run: str | os.PathLike,
    dataset: str | None = None,
    key_path: str | None = None,
    passphrase: str | None = None,
    allow_key_mismatch: bool = False,
    limit: int | None = None,
    weights: str | None = None,
    split: str = "test",
) -> dict:
    """Accuracy of a run's adapter on a dataset, refusing a key other than the run's unless allowed."""
    EvaluateConfig(str(run), dataset, key_path, passphrase, allow_key_mismatch, limit, weights, split)
    run = Path(run)
    adapter = run / "adapter.safetensors" if run.is_dir() else run
    model, info = load_classifier(adapter, weights=weights)
    key = resolve_key(key_path, passphrase, info.patch_size, info.channels)
    trained_with = info.key_fingerprint or "plain"
    given = fingerprint_of(key)
    if given != trained_with and not allow_key_mismatch:
        raise KeyMismatchError(
            f"the adapter was trained with key {trained_with}, the given key is {given}; "
            f"pass --allow-key-mismatch to see what a wrong key gives"
        )
    splits = load_dataset(dataset or info.dataset, info.image_size, info.channels, limit)
    if list(splits.classes) != list(info.class_names):
        raise ConfigError(
            f"dataset {splits.name} has classes {splits.classes[:4]}..., the adapter {info.class_names[:4]}..."
        )
    images = getattr(splits, split)
    if len(images) == 0:
        raise ConfigError(f"dataset {splits.name} has no {split} images" + (f" with --limit {limit}" if limit else ""))
    preprocess = BatchPreprocess(info.image_size, info.channels, key, tuple(info.mean), tuple(info.std))
    device = pick_device()
    model.to(device)
    preprocess.to(device)
    accuracy = evaluate(model, images, preprocess, device)
    return {
        "accuracy": accuracy,
        "images": len(images),
        "dataset": splits.name,
        "split": split,
        "trained_key": trained_with,
        "given_key": given,
        "method": info.method,
    }
