"""Pretraining the shipped backbones on Fashion-MNIST, and their model cards.

``encvit-tiny`` sees the grey images; ``encvit-tiny-colour`` sees them with fresh random colours every batch
(``encvit.data.colour.RandomTint``: flat tints, photograph backgrounds, a share left grey) and is validated and tested
on the fixed colour versions, so that the cipher's shuffle across colour channels meets a backbone that uses colour.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

from ..common.atomic import atomic_path, output_lock, write_text
from ..common.errors import (
    ConfigError,
    check_options,
    check_output_path,
    integer,
    number,
    one_of,
    option,
    optional,
    path,
)
from ..common.timing import cpu_mhz
from ..data.datasets import HOLDOUT_PER_CLASS, Splits, load_dataset
from ..models.backbones import EMBEDDED, NORM_MEAN, NORM_STD, create_backbone, embedded_weights_path
from ..models.preprocess import BatchPreprocess
from .loop import LoopSettings, evaluate, fit, pick_device
from .run import MAX_SEED, check_splits

COLOUR_BACKBONES = ("encvit-tiny-colour",)


@dataclass
class PretrainConfig:
    """The recipe of the shipped weights; its defaults are the recipe used for them. Values that cannot work are
    refused when it is made."""

    name: str = option("encvit-tiny", one_of(*EMBEDDED), flag="name")
    epochs: int = option(15, integer(1))
    lr: float = option(2e-3, number(0, low_open=True))
    weight_decay: float = option(0.05, number(0))
    batch_size: int = option(128, integer(1))
    warmup_epochs: float = option(1.0, number(0))
    label_smoothing: float = option(0.1, number(0, 1, high_open=True))
    hflip: bool = True
    seed: int = option(0, integer(0, MAX_SEED))
    limit: int | None = option(None, optional(integer(1)))
    out: str | None = option(None, optional(path()))

    def __post_init__(self):
        check_options(self)
        if self.warmup_epochs > self.epochs:
            raise ConfigError(f"--warmup-epochs must be at most --epochs ({self.epochs}), got {self.warmup_epochs:g}")


def pretrain(config: PretrainConfig) -> dict:
    """Train the embedded backbone from scratch on the 55,000 pretraining images; write weights and card."""
    out = Path(config.out) if config.out else embedded_weights_path(config.name)
    check_output_path(out, "--out", folder=False)
    check_output_path(out.with_suffix(".md"), "--out (its model card)", folder=False)
    if out.suffix == ".md":
        raise ConfigError(f"--out {out} would be overwritten by its model card (.md): name a .safetensors file")
    with output_lock(out):  # one command at a time writes these weights
        return _pretrain(config, out)


def _pretrain(config: PretrainConfig, out: Path) -> dict:
    torch.manual_seed(config.seed)
    model = create_backbone(config.name, pretrained=False)
    spec = EMBEDDED[config.name]
    colour = config.name in COLOUR_BACKBONES
    splits = pretraining_splits(colour, config.limit)
    check_splits(splits, config.limit)
    preprocess = BatchPreprocess(spec["img_size"], spec["in_chans"])
    augment = None
    if colour:
        from ..data.colour import RandomTint

        augment = RandomTint(size=splits.train.images.shape[-1], seed=config.seed)
    settings = LoopSettings(
        epochs=config.epochs,
        lr=config.lr,
        batch_size=config.batch_size,
        weight_decay=config.weight_decay,
        warmup_epochs=config.warmup_epochs,
        label_smoothing=config.label_smoothing,
        hflip=config.hflip,
        seed=config.seed,
    )
    start, load_start = time.perf_counter(), os.getloadavg()[0]
    rows = fit(
        model,
        splits.train,
        splits.val,
        None,
        preprocess,
        settings,
        on_epoch=lambda r: print(json.dumps(r), flush=True),
        augment=augment,
    )
    seconds = time.perf_counter() - start
    test_acc = evaluate(model, splits.test, preprocess, pick_device())
    grey_test_acc = evaluate(model, splits.notes["grey_test"], preprocess, pick_device()) if colour else None
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out) as tmp:
        save_file(state, tmp, metadata={"name": config.name, "recipe": json.dumps(asdict(config))})
    result = {
        "train_images": len(splits.train),
        "val_images": len(splits.val),
        "test_images": len(splits.test),
        "val_acc": rows[-1]["val_acc"],
        "test_acc": test_acc,
        "grey_test_acc": grey_test_acc,
        "seconds": seconds,
        "epochs": rows,
        "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)],
    }
    write_text(out.with_suffix(".md"), model_card(config, result, out))
    return result


def pretraining_splits(colour: bool, limit: int | None) -> Splits:
    """The 55,000 pretraining images (grey; the colour backbone colours them per batch) with a validation and a
    test set in the form the backbone is meant for; the colour one also keeps the grey test set."""
    grey = load_dataset("fashion55k", limit=limit)
    if not colour:
        return grey
    shown = load_dataset("cfashion55k", limit=limit)
    return Splits(shown.name, grey.train, shown.val, shown.test, {**shown.notes, "grey_test": grey.test})


def model_card(config: PretrainConfig, result: dict, weights: Path) -> str:
    """A model card in Markdown: data, recipe, accuracy and the command that regenerates the weights."""
    spec = EMBEDDED[config.name]
    n_params = sum(p.numel() for p in create_backbone(config.name, pretrained=False).parameters())
    name_flag = "" if config.name == "encvit-tiny" else f" --name {config.name}"
    grey = (
        ""
        if result.get("grey_test_acc") is None
        else f" {result['grey_test_acc']:.2f}% on the grey Fashion-MNIST test images."
    )
    curve = "\n".join(
        f"| {r['epoch']} | {r['train_loss']:.3f} | {r['val_acc']:.2f} | {r['seconds']:.0f} |" for r in result["epochs"]
    )
    return f"""# Model card: {config.name}

A small timm `VisionTransformer` pretrained from scratch by this project, so that everything runs offline.

- **Architecture:** `VisionTransformer({", ".join(f"{k}={v}" for k, v in spec.items())})`, {n_params:,} parameters.
  A patch (and a key block) is 4 x 4 x 3 = 48 values; 8 x 8 = 64 patches per image.
- **Input:** 32 x 32 x 3. {_INPUT[config.name in COLOUR_BACKBONES]} Normalisation mean = {NORM_MEAN}, std = {NORM_STD}.
- **Data:** Fashion-MNIST from Debian's `dataset-fashion-mnist`: the 60,000 training images except the fine-tuning
  hold-out (for each class its last {HOLDOUT_PER_CLASS} images in file order = 5,000 images, the `fashion5k` dataset).
  Of the remaining 55,000, a seeded stratified 10% ({result["val_images"]:,}) is validation, {result["train_images"]:,} train.
- **Recipe:** {config.epochs} epochs, AdamW lr {config.lr}, weight decay {config.weight_decay}, batch {config.batch_size},
  linear warm-up {config.warmup_epochs} epoch then cosine, label smoothing {config.label_smoothing},
  random horizontal flips {"on" if config.hflip else "off"}, seed {config.seed}, plain (unencrypted) images.{_colour_recipe(config)}
- **Accuracy:** {result["test_acc"]:.2f}% on the {result["test_images"]:,} {_TEST[config.name in COLOUR_BACKBONES]};
  {result["val_acc"]:.2f}% on validation.{grey}
- **Time:** {result["seconds"] / 60:.1f} minutes on {torch.get_num_threads()} CPU thread(s) ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, clock {cpu_mhz():.0f} MHz, load average {result["load_average"][0]:.1f} at the start and {result["load_average"][1]:.1f} at the end),
  torch {torch.__version__}, timm {timm.__version__}.
- **Regenerate:** `encvit pretrain{name_flag} --epochs {config.epochs}` (writes `{weights.name}` and this card).

| epoch | train loss | val acc (%) | seconds |
|---|---|---|---|
{curve}
"""


_INPUT = {
    False: "Fashion-MNIST's 28 x 28 grey images are resized to 32 x 32 (bilinear, antialiased) and the grey "
    "channel is repeated three times.",
    True: "Fashion-MNIST's 28 x 28 grey images, coloured (encvit.data.colour), resized to 32 x 32 (bilinear, "
    "antialiased).",
}
_TEST = {
    False: "Fashion-MNIST test images",
    True: "Fashion-MNIST test images in their fixed colours (`cfashion55k`'s test split)",
}


def _colour_recipe(config: PretrainConfig) -> str:
    if config.name not in COLOUR_BACKBONES:
        return ""
    from ..data.colour import MIN_CONTRAST

    return (
        f"\n- **Colour:** every training batch is coloured afresh (`encvit.data.colour.RandomTint`): each image a "
        f"random foreground and background colour at least {MIN_CONTRAST:g} apart in RGB, 30% of those over a "
        f"crop of one of scikit-image's and scikit-learn's six colour photographs instead of a flat background, "
        f"20% left grey. Validation and test use the fixed colours of `cfashion55k`."
    )


if __name__ == "__main__":
    import sys

    print(json.dumps(pretrain(PretrainConfig(epochs=int(sys.argv[1]) if len(sys.argv) > 1 else 15)))[:2000])
