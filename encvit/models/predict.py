"""Classifying images with trained adapters: what the demo app and notebooks call."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..cipher.key import Key
from ..common.errors import ConfigError
from ..common.shipped import SHIPPED_RESULTS
from .adapters import AdapterInfo, load_classifier, read_adapter
from .backbones import create_backbone
from .preprocess import BatchPreprocess


def shipped_comparison(dataset: str = "fashion5k") -> Path:
    """The folder of the shipped default comparison (adapters, results table and chart)."""
    return SHIPPED_RESULTS / dataset


def find_runs(folder: str | os.PathLike) -> dict[str, Path]:
    """Run directories (holding adapter.safetensors) below `folder`, by their path relative to it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder")
    return {
        str(p.parent.relative_to(folder)) or p.parent.name: p.parent
        for p in sorted(folder.rglob("adapter.safetensors"))
    }


def load_runs(folder: str | os.PathLike) -> dict[str, tuple[nn.Module, AdapterInfo]]:
    """Every run below `folder` as (model in eval mode, adapter info); the backbone is loaded once."""
    models: dict[str, tuple[nn.Module, AdapterInfo]] = {}
    backbones: dict[str, nn.Module] = {}
    for name, run in find_runs(folder).items():
        info, _ = read_adapter(run / "adapter.safetensors")
        pretrained = info.method != "full"  # a full adapter holds every weight: no backbone weights needed
        if (info.backbone, pretrained) not in backbones:
            backbones[info.backbone, pretrained] = create_backbone(
                info.backbone, pretrained=pretrained, image_size=info.image_size
            )
        models[name] = load_classifier(
            run / "adapter.safetensors", backbone=copy.deepcopy(backbones[info.backbone, pretrained])
        )
    return models


@torch.inference_mode()
def predict(
    model: nn.Module, info: AdapterInfo, images: np.ndarray | torch.Tensor, key: Key | None = None, top_k: int = 3
) -> list[list[tuple[str, float]]]:
    """Top-k (class, probability) for each plain uint8 image (N x H x W x C numpy or N x C x H x W tensor).

    With a key, images are encrypted before the model sees them (as a data owner would send them).
    """
    batch = torch.as_tensor(images)
    if batch.ndim == 3:
        batch = batch.unsqueeze(0)
    if isinstance(images, np.ndarray):
        batch = batch.permute(0, 3, 1, 2)
    preprocess = BatchPreprocess(info.image_size, info.channels, key, tuple(info.mean), tuple(info.std))
    device = next(model.parameters()).device
    probabilities = model(preprocess.to(device)(batch.to(device))).softmax(-1).cpu()
    values, indices = probabilities.topk(min(top_k, probabilities.shape[1]), dim=1)
    return [
        [(info.class_names[i], float(v)) for v, i in zip(vs, ix, strict=True)]
        for vs, ix in zip(values.tolist(), indices.tolist(), strict=True)
    ]
