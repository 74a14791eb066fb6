"""What the demo app does, as functions a notebook can call too: read uploads, pick runs, classify, package.

The app (``app/Home.py``) only lays these out as widgets. Every image is brought to the models' input size
first, so the encrypted image shown is exactly the one the encrypted adapters classify.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import re
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn

from ..cipher.images import colour_images, open_image, png_bytes, to_array
from ..cipher.key import Key, parse_key_json
from ..common.errors import ConfigError, EncvitError, KeyFileError, KeyMismatchError
from ..common.shipped import Sample
from ..data.names import COLOUR_DATASETS
from ..models.adapters import AdapterInfo
from ..models.methods import METHODS, PAPER_COUNTS_M, PAPER_UNIT, parameter_table
from ..models.predict import predict

PAPER_BACKBONE = "vit_base_patch16_224"


@dataclass(frozen=True)
class Geometry:
    """What the models take: square images of `image_size`, `channels` channels, keys of `patch_size` blocks."""

    image_size: int
    patch_size: int
    channels: int
    class_names: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.image_size} px, {self.channels} channels, {len(self.class_names)} classes"


@dataclass(frozen=True)
class DemoImage:
    """An image at the models' input size (H x W x C uint8), its name and its true label if known."""

    name: str
    array: np.ndarray
    label: str | None = None

    @functools.cached_property
    def digest(self) -> str:
        """A short SHA-256 of the pixels the models see: the image's name among kept predictions and drawings."""
        digest = hashlib.sha256(f"{self.array.shape}|{self.array.dtype}|".encode())
        digest.update(np.ascontiguousarray(self.array).tobytes())
        return digest.hexdigest()[:16]


def escape_markdown(text: str) -> str:
    """`text` shown as written where Streamlit renders Markdown: "C*M*M = 1*4*4" stays, not "CMM = 144"."""
    # CommonMark lets a backslash escape any ASCII punctuation; no installed library exports this one-liner.
    return re.sub(r"([!-/:-@\[-`{-~])", r"\\\1", str(text))


# ---- runs ------------------------------------------------------------------------------------------
def geometry(infos: dict[str, AdapterInfo]) -> Geometry:
    """The input geometry shared by every run; ConfigError names two runs that differ."""
    if not infos:
        raise ConfigError("no runs chosen: choose at least one run directory")
    shapes = {name: Geometry(i.image_size, i.patch_size, i.channels, tuple(i.class_names)) for name, i in infos.items()}
    (first, shape), *rest = shapes.items()
    for name, other in rest:
        if other != shape:
            raise ConfigError(
                f"runs {first} and {name} take different inputs ({shape} vs {other}): choose runs of one comparison"
            )
    return shape


def is_encrypted(info: AdapterInfo) -> bool:
    """Whether the run was trained on encrypted images (its adapter records a key fingerprint)."""
    return bool(info.key_fingerprint)


def default_runs(infos: dict[str, AdapterInfo]) -> list[str]:
    """One encrypted run per method (full, melo, proposed) and one plain run for reference (proposed first)."""
    chosen = []
    for method in METHODS:
        chosen += [n for n in sorted(infos) if infos[n].method == method and is_encrypted(infos[n])][:1]
    for method in ("proposed", "melo", "full"):
        plain = [n for n in sorted(infos) if infos[n].method == method and not is_encrypted(infos[n])]
        if plain:
            chosen.append(plain[0])
            break
    return chosen or sorted(infos)[:4]


def key_mismatch(infos: dict[str, AdapterInfo], key: Key) -> str | None:
    """A message naming both fingerprints if any encrypted run was trained with another key, else None."""
    wrong = {n: i.key_fingerprint for n, i in infos.items() if is_encrypted(i) and i.key_fingerprint != key.fingerprint}
    if not wrong:
        return None
    trained = ", ".join(sorted(set(wrong.values())))
    return (
        f"The key in use ({key.fingerprint}) is not the key the encrypted adapters were trained with "
        f"({trained}; runs {', '.join(sorted(wrong))}). Their predictions below are made on images "
        f"encrypted with the wrong key and will mostly be wrong."
    )


def check_key(key: Key, shape: Geometry) -> None:
    """KeyMismatchError unless `key` can encrypt the models' input images."""
    try:
        key.check_fits(shape.image_size, shape.image_size, shape.channels)
    except EncvitError as exc:
        raise KeyMismatchError(
            f"key {key.fingerprint} ({key.block_size}x{key.block_size} blocks, {key.channels} "
            f"channel(s)) cannot encrypt the models' {shape.image_size}x{shape.image_size} "
            f"images with {shape.channels} channel(s): {exc}"
        ) from exc


# ---- keys ------------------------------------------------------------------------------------------
def key_from_bytes(data: bytes, name: str = "key file") -> Key:
    """A key from the bytes of an uploaded key file; KeyFileError names the file if it is not one."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise KeyFileError(f"{name} is not a valid JSON key file (truncated or corrupt?): {exc}") from exc
    return Key.from_dict(parse_key_json(text, name), source=name)


def key_download(key: Key) -> tuple[str, bytes]:
    """(file name, content) of the key file, the same JSON that `Key.save` writes."""
    return f"key-{key.fingerprint}.json", (json.dumps(key.to_dict()) + "\n").encode()


# ---- images ----------------------------------------------------------------------------------------
def read_image(data: bytes, name: str, shape: Geometry, label: str | None = None) -> DemoImage:
    """Decode an uploaded image and bring it to the models' input size; ImageError names a bad one."""
    image = open_image(data, name=name)
    return DemoImage(name, to_array(image, shape.channels, resize=(shape.image_size, shape.image_size)), label)


def read_upload(data: bytes, name: str, shape: Geometry) -> tuple[DemoImage | None, str | None]:
    """(image, None) for a readable upload, (None, the message naming it) for an unreadable one."""
    try:
        return read_image(data, name, shape), None
    except EncvitError as exc:
        return None, str(exc)


def read_uploads(files: Iterable[tuple[str, bytes]], shape: Geometry) -> tuple[list[DemoImage], list[str]]:
    """The readable images among (name, bytes) uploads and one error message for each unreadable one."""
    read = [read_upload(data, name, shape) for name, data in files]
    return [image for image, _ in read if image is not None], [error for _, error in read if error is not None]


def sample_images(samples: Iterable[Sample], shape: Geometry) -> list[DemoImage]:
    """Shipped samples at the models' input size, with their true label where it is one of the classes."""
    return [
        read_image(s.path.read_bytes(), s.path.name, shape, s.label if s.label in shape.class_names else None)
        for s in samples
    ]


def grey_runs_note(image: DemoImage, infos: dict[str, AdapterInfo]) -> str | None:
    """A caption for a colour image shown to runs that were all trained on grey images (known by name), else None."""
    trained_on = {info.dataset for info in infos.values()}
    if not infos or not colour_images([image.array]) or not trained_on <= set(COLOUR_DATASETS.values()):
        return None
    return (
        f"A colour image: the key moves its values between truly different channels. The runs chosen were "
        f"trained on grey images ({', '.join(sorted(trained_on))}), so expect weaker predictions."
    )


def enlarge(array: np.ndarray, factor: int, grid: int | None = None, colour=(255, 64, 64)) -> np.ndarray:
    """Nearest-neighbour upscaling by `factor` (so small images stay crisp), as RGB; optional block-grid lines."""
    big = np.repeat(np.repeat(array, factor, axis=0), factor, axis=1)
    if big.shape[-1] == 1:
        big = np.repeat(big, 3, axis=-1)
    if grid:
        big = big.copy()
        step = grid * factor
        big[::step, :] = colour
        big[:, ::step] = colour
        big[-1, :] = colour
        big[:, -1] = colour
    return big


def display_factor(image_size: int, target: int = 192) -> int:
    """The upscaling factor that shows an image of `image_size` at about `target` pixels."""
    return max(1, target // image_size)


def shown_png(image: DemoImage, factor: int, key: Key | None = None, grid: int | None = None) -> bytes:
    """The PNG the page shows: the image (encrypted with `key` if given) enlarged `factor` times, with the lines
    between `grid` x `grid` blocks if given. PNG, not JPEG, whose colour subsampling would blur a block's pixels
    into each other."""
    return png_bytes(enlarge(key.encrypt(image.array) if key is not None else image.array, factor, grid))


def download_name(images: list[DemoImage], key: Key) -> tuple[str, str]:
    """(file name, MIME type) of `encrypted_download`, known without encrypting anything."""
    if len(images) == 1:
        return f"{Path(images[0].name).stem}-encrypted.png", "image/png"
    return f"encrypted-{key.fingerprint}.zip", "application/zip"


def encrypted_download(images: list[DemoImage], key: Key) -> tuple[str, bytes, str]:
    """(file name, content, MIME type): one encrypted PNG, or a zip of them for several images."""
    encrypted = [(f"{Path(i.name).stem}-encrypted.png", png_bytes(key.encrypt(i.array))) for i in images]
    if len(encrypted) == 1:
        return (*encrypted[0], "image/png")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        seen: dict[str, int] = {}
        for name, data in encrypted:
            seen[name] = seen.get(name, 0) + 1
            archive.writestr(name if seen[name] == 1 else f"{Path(name).stem}-{seen[name]}.png", data)
    name, mime = download_name(images, key)
    return name, buffer.getvalue(), mime


# ---- predictions -----------------------------------------------------------------------------------
def classify(
    models: dict[str, tuple[nn.Module, AdapterInfo]], images: list[DemoImage], key: Key, top_k: int = 3
) -> dict[str, list[list[tuple[str, float]]]]:
    """Top-k per run and image: encrypted runs see the images encrypted with `key`, plain runs the plain images."""
    if not images:
        return {}
    batch = np.stack([i.array for i in images])
    return {
        name: predict(model, info, batch, key if is_encrypted(info) else None, top_k)
        for name, (model, info) in models.items()
    }


def prediction_table(
    predictions: dict[str, list[list[tuple[str, float]]]],
    infos: dict[str, AdapterInfo],
    index: int,
    label: str | None = None,
) -> pd.DataFrame:
    """One image's predictions: a row per run with what it saw, its top classes and, with a label, a ✓/✗."""
    rows = []
    for name, per_image in predictions.items():
        info = infos[name]
        row = {
            "run": name if info.method in name else f"{name} ({info.method})",
            "sees": "encrypted" if is_encrypted(info) else "plain",
        }
        for rank, (cls, p) in enumerate(per_image[index], 1):
            row[f"top-{rank}"] = f"{cls} {100 * p:.0f}%"
        if label is not None:
            row["correct"] = "✓" if per_image[index][0][0] == label else "✗"
        rows.append(row)
    return pd.DataFrame(rows).set_index("run")


# ---- parameter counts ------------------------------------------------------------------------------
def parameter_rows(backbones: Iterable[str] = (PAPER_BACKBONE, "encvit-tiny"), num_classes: int = 10) -> pd.DataFrame:
    """Trainable parameters per backbone and method in 10^6 and in the paper's 2^20 unit, beside the paper's."""
    rows = []
    for backbone in backbones:
        for method, c in parameter_table(backbone, num_classes).items():
            rows.append(
                {
                    "backbone": backbone,
                    "method": method,
                    "trainable": c["trainable"],
                    "millions (10^6)": c["millions"],
                    "paper M (2^20)": c["paper_m"],
                    "% of full": c["percent_of_full"],
                    "paper (ViT-B/16)": PAPER_COUNTS_M[method] if backbone == PAPER_BACKBONE else None,
                }
            )
    imagenet = parameter_table(PAPER_BACKBONE, 1000)["full"]["trainable"]
    rows.append(
        {
            "backbone": PAPER_BACKBONE,
            "method": "full, 1000-class head",
            "trainable": imagenet,
            "millions (10^6)": imagenet / 1e6,
            "paper M (2^20)": imagenet / PAPER_UNIT,
            "% of full": None,
            "paper (ViT-B/16)": PAPER_COUNTS_M["full"],
        }
    )
    return pd.DataFrame(rows)
