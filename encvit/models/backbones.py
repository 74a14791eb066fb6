"""Backbones by name: the shipped ``encvit-tiny`` and any timm Vision Transformer.

Every backbone is a timm ``VisionTransformer``, so the code that fine-tunes the shipped one is the
code that fine-tunes ViT-B/16. Inputs are normalised with mean = std = 0.5 (see ``encvit.models.adapt``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from timm.models.vision_transformer import VisionTransformer

from ..common.errors import ConfigError
from ..common.shipped import WEIGHTS_DIR

NORM_MEAN = (0.5, 0.5, 0.5)
NORM_STD = (0.5, 0.5, 0.5)

# The shipped backbones: 32x32x3 input, 4x4 patches (a block is 4*4*3 = 48 values), 64 tokens. encvit-tiny is
# pretrained on grey images; encvit-tiny-colour, the same architecture, on colour-tinted ones (encvit.data.colour).
_TINY = dict(img_size=32, patch_size=4, in_chans=3, embed_dim=96, depth=6, num_heads=3, mlp_ratio=4.0, num_classes=10)
EMBEDDED = {"encvit-tiny": _TINY, "encvit-tiny-colour": _TINY}


@dataclass(frozen=True)
class BackboneInfo:
    """What a data pipeline needs to know about a backbone."""

    name: str
    image_size: int
    patch_size: int
    channels: int
    mean: tuple[float, ...] = NORM_MEAN
    std: tuple[float, ...] = NORM_STD


def describe(model: VisionTransformer, name: str) -> BackboneInfo:
    """The input geometry of a timm ViT."""
    proj = model.patch_embed.proj
    return BackboneInfo(
        name=name,
        image_size=int(model.patch_embed.img_size[0]),
        patch_size=int(proj.kernel_size[0]),
        channels=int(proj.in_channels),
    )


def embedded_weights_path(name: str) -> Path:
    """Where the shipped weights of an embedded backbone live."""
    return WEIGHTS_DIR / f"{name}.safetensors"


def create_backbone(
    name: str = "encvit-tiny",
    pretrained: bool = True,
    weights: str | os.PathLike | None = None,
    image_size: int | None = None,
) -> VisionTransformer:
    """A timm ViT by name, with the shipped, downloaded or local (`weights`) pretrained weights."""
    if name in EMBEDDED:
        model = VisionTransformer(**EMBEDDED[name])
        if weights is None and pretrained:
            weights = embedded_weights_path(name)
            if not weights.exists():
                raise ConfigError(f"shipped weights {weights} are missing: regenerate them with `encvit pretrain`")
    else:
        model = _create_timm(name, pretrained and weights is None, image_size)
    if weights is not None:
        load_weights(model, weights, name)
    return model


def _create_timm(name: str, pretrained: bool, image_size: int | None) -> VisionTransformer:
    import timm

    if name not in timm.list_models(pretrained=False) and name.split(".")[0] not in timm.list_models():
        raise ConfigError(
            f"unknown backbone {name!r}: use one of {', '.join(EMBEDDED)} or a timm ViT name "
            f"(timm.list_models('vit_*'))"
        )
    kwargs = {"img_size": image_size} if image_size else {}
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as exc:  # hub and network errors come in many types
        if not pretrained:
            raise ConfigError(f"timm could not build {name!r}: {exc}") from exc
        raise ConfigError(
            f"could not fetch pretrained weights for {name!r} ({type(exc).__name__}: {exc}). Offline, download "
            f"them elsewhere (e.g. timm.create_model({name!r}, pretrained=True) and save_file(model.state_dict())) "
            f"and pass --weights PATH.safetensors, or use --no-pretrained for random weights"
        ) from exc
    if not isinstance(model, VisionTransformer):
        raise ConfigError(f"{name!r} is a {type(model).__name__}, not a timm VisionTransformer")
    return model


def load_weights(model: torch.nn.Module, path: str | os.PathLike, name: str) -> None:
    """Load a safetensors or torch state dict into `model`; the head may differ and is then left out."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"weights file {path} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"weights file {path} is not readable ({exc})") from exc
    own = model.state_dict()
    head = {k for k in state if k.startswith("head.") and k in own and state[k].shape != own[k].shape}
    state = {k: v for k, v in state.items() if k not in head}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("head.")]
    if missing or unexpected:
        raise ConfigError(
            f"weights file {path} does not fit backbone {name!r}: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )


def weights_hash(model: torch.nn.Module, exclude_prefixes: tuple[str, ...] = ("head.",)) -> str:
    """A short SHA-256 of the backbone weights (head excluded), to tie adapters to their backbone."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith(exclude_prefixes) or "lora_" in name:
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def create_skeleton(name: str, image_size: int | None = None) -> VisionTransformer:
    """A backbone's structure on the meta device (no memory, no weights): for counting parameters."""
    with torch.device("meta"):
        return create_backbone(name, pretrained=False, image_size=image_size)
