"""Adapter files: only what a method trained, as safetensors with the metadata needed to use it safely.

A LoRA method's file holds the LoRA A and B matrices and the head (and, for ``proposed``, the patch
embedding); ``full`` holds the whole model; ``head`` (a linear probe, e.g. the encrypted-head trainer)
holds the head. Loading checks every field against the model and names the first that differs.
"""

from __future__ import annotations

import json
import math
import os
import reprlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..common.atomic import atomic_path
from ..common.errors import AdapterError, Allowed, OutputError, each, integer, number, text
from .backbones import NORM_MEAN, NORM_STD, create_backbone, describe, weights_hash
from .methods import prepare, trainable_parameters

ADAPTER_FORMAT = "encvit-adapter"
ADAPTER_VERSION = 1


@dataclass
class AdapterInfo:
    """The metadata stored with an adapter."""

    method: str
    backbone: str
    backbone_hash: str
    class_names: list[str]
    image_size: int
    patch_size: int
    channels: int = 3
    rank: int = 0
    alpha: float = 0.0
    mean: list[float] = field(default_factory=lambda: list(NORM_MEAN))
    std: list[float] = field(default_factory=lambda: list(NORM_STD))
    key_fingerprint: str = ""  # empty: trained on plain images
    dataset: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_metadata(self) -> dict[str, str]:
        """safetensors metadata (strings only)."""
        data = {k: json.dumps(v) for k, v in asdict(self).items()}
        return {"format": ADAPTER_FORMAT, "version": str(ADAPTER_VERSION), **data}

    @classmethod
    def from_metadata(cls, meta: dict[str, str] | None, source: str) -> AdapterInfo:
        """Parse and check safetensors metadata written by `to_metadata`."""
        if not meta or meta.get("format") != ADAPTER_FORMAT:
            raise AdapterError(f"{source} is not an encvit adapter file (no format metadata)")
        if meta.get("version") != str(ADAPTER_VERSION):
            raise AdapterError(
                f"{source} has adapter version {meta.get('version')}; this encvit reads {ADAPTER_VERSION}"
            )
        try:
            values = {k: json.loads(meta[k]) for k in cls.__dataclass_fields__ if k in meta}
            info = cls(**values)
        except (TypeError, ValueError, RecursionError) as exc:
            raise AdapterError(f"{source} has malformed metadata: {exc}") from exc
        info.check(source)
        return info

    def check(self, source: str) -> None:
        """AdapterError naming the first field whose value has the wrong type or range (e.g. a text for `mean`)."""
        for name, allowed in _FIELD_RULES.items():
            value = getattr(self, name)
            if not allowed.accepts(value):
                raise AdapterError(
                    f"{source} has malformed metadata: {name} must be {allowed.text}, got {reprlib.repr(value)}"
                )
        for name in ("mean", "std"):
            if len(getattr(self, name)) < self.channels:
                raise AdapterError(
                    f"{source} has malformed metadata: {name} has {len(getattr(self, name))} values "
                    f"for {self.channels} channels"
                )


def _numbers(positive: bool) -> Allowed:
    """A non-empty list of finite numbers (> 0 if `positive`): a normalisation's mean or std."""

    def accepts(v) -> bool:
        return (
            isinstance(v, list)
            and bool(v)
            and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and (x > 0 or not positive)
                for x in v
            )
        )

    return Allowed("a list of " + ("positive " if positive else "") + "numbers", accepts)


def _any_text() -> Allowed:
    """A string, possibly empty."""
    return Allowed("a text", lambda v: isinstance(v, str))


_FIELD_RULES = {
    "method": text(),
    "backbone": text(),
    "backbone_hash": _any_text(),
    "class_names": each(text()),
    "image_size": integer(1),
    "patch_size": integer(1),
    "channels": integer(1, 4),
    "rank": integer(0),
    "alpha": number(0),
    "mean": _numbers(False),
    "std": _numbers(True),
    "key_fingerprint": _any_text(),
    "dataset": _any_text(),
}


def adapter_tensors(model: nn.Module, method: str) -> dict[str, torch.Tensor]:
    """What `method` trained: the whole state for full, else the trainable parameters."""
    if method == "full":
        state = model.state_dict()
    else:
        state = {name: p for name, p in trainable_parameters(model).items()}
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def save_adapter(path: str | os.PathLike, model: nn.Module, info: AdapterInfo) -> Path:
    """Write `model`'s trained tensors and `info` to a safetensors file, atomically."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            save_file(adapter_tensors(model, info.method), tmp, metadata=info.to_metadata())
    except (SafetensorError, OSError) as exc:  # e.g. a full disk: safetensors reports it as its own error
        raise OutputError(f"adapter file {path} could not be written ({exc}); nothing of it was kept") from exc
    return path


def read_adapter(path: str | os.PathLike) -> tuple[AdapterInfo, dict[str, torch.Tensor]]:
    """The metadata and tensors of an adapter file; a truncated or corrupt file is refused by name."""
    info = read_adapter_info(path)
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise AdapterError(f"adapter file {path} is truncated or corrupt ({exc})") from exc
    return info, tensors


def read_adapter_info(path: str | os.PathLike) -> AdapterInfo:
    """Only the metadata of an adapter file (its header; the tensors are not read), checked field by field."""
    path = Path(path)
    if not path.exists():
        raise AdapterError(f"adapter file {path} not found")
    try:
        with safe_open(path, "pt") as handle:
            meta = handle.metadata()
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise AdapterError(f"adapter file {path} is truncated or corrupt ({exc})") from exc
    return AdapterInfo.from_metadata(meta, f"adapter file {path}")


def check_compatible(info: AdapterInfo, expected: dict, source: str) -> None:
    """Raise AdapterError naming the first field of `info` that differs from `expected`."""
    for name, want in expected.items():
        have = getattr(info, name)
        if have != want:
            raise AdapterError(f"{source} does not fit: its {name} is {have!r}, the model's is {want!r}")


def load_into(model: nn.Module, info: AdapterInfo, tensors: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Copy an adapter's tensors into a model prepared for the same method (names and shapes must match)."""
    wanted = adapter_tensors(model, info.method)
    missing = sorted(set(wanted) - set(tensors))
    extra = sorted(set(tensors) - set(wanted))
    if missing or extra:
        raise AdapterError(f"{source} does not fit the model: missing {missing[:3]}, unexpected {extra[:3]}")
    for name, tensor in tensors.items():
        if tensor.shape != wanted[name].shape:
            raise AdapterError(
                f"{source} does not fit: {name} has shape {tuple(tensor.shape)}, "
                f"the model needs {tuple(wanted[name].shape)}"
            )
    model.load_state_dict(tensors, strict=False)
    return model


def load_classifier(
    path: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    backbone: nn.Module | None = None,
    expect: dict | None = None,
) -> tuple[nn.Module, AdapterInfo]:
    """The backbone named in an adapter file with the adapter applied, ready for inference (eval mode).

    `weights` is a local backbone weights file; `backbone` an already-built one (it is modified);
    `expect` maps AdapterInfo fields (method, backbone, rank, num_classes, ...) to the values the caller needs.
    """
    info, tensors = read_adapter(path)
    source = f"adapter file {path}"
    check_compatible(info, expect or {}, source)
    model = (
        backbone
        if backbone is not None
        else create_backbone(
            info.backbone,
            pretrained=info.method != "full" or weights is not None,
            weights=weights,
            image_size=info.image_size,
        )
    )
    geometry = describe(model, info.backbone)
    if info.method != "full":
        check_compatible(info, {"backbone_hash": weights_hash(model)}, source)
    check_compatible(
        info,
        {"image_size": geometry.image_size, "patch_size": geometry.patch_size, "channels": geometry.channels},
        source,
    )
    prepare(model, info.method, info.num_classes, info.rank or 4, info.alpha or 8.0)
    load_into(model, info, tensors, source)
    return model.eval(), info
