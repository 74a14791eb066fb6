"""Reading and writing images for the cipher: validated on read, lossless PNG on write."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .atomic import atomic_path
from .errors import ImageError

MAX_PIXELS = 40_000_000  # beyond this an upload is refused rather than risk exhausting memory


def open_image(source, name: str | None = None) -> Image.Image:
    """Open and fully decode an image from a path, bytes or file object; ImageError names a bad one."""
    name = name or (str(source) if isinstance(source, (str, os.PathLike)) else "image")
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        with Image.open(source) as image:
            if image.width * image.height > MAX_PIXELS:
                raise ImageError(f"{name} is {image.width}x{image.height} pixels; at most {MAX_PIXELS:,} are accepted")
            image.load()
            return image.copy()
    except FileNotFoundError:
        raise ImageError(f"{name}: file not found") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name} is not a readable image ({type(exc).__name__}: {exc})") from exc


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' -> (W, H)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ImageError(f"size {text!r} is not of the form WxH, e.g. 224x224") from None
    if w < 1 or h < 1:
        raise ImageError(f"size {text!r} must be positive")
    return w, h


def to_array(image: Image.Image, channels: int = 3, resize: tuple[int, int] | None = None) -> np.ndarray:
    """An H x W x `channels` uint8 array; grey images are expanded, alpha is dropped, `resize` is (W, H)."""
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise ImageError(f"images can be read with 1 or 3 channels, not {channels}")
    image = image.convert(mode)
    if resize is not None:
        image = image.resize(resize, Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def is_grey(image: Image.Image) -> bool:
    """Whether the image has a single (grey or palette-free luminance) channel."""
    return image.mode in ("1", "L", "LA", "I", "I;16", "F")


def load_image(source, channels: int = 3, resize: tuple[int, int] | None = None) -> np.ndarray:
    """Read an image as H x W x `channels` uint8, optionally resized to (W, H)."""
    return to_array(open_image(source), channels, resize)


def save_png(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an H x W x C uint8 array as a lossless PNG, atomically."""
    path = Path(path)
    image = Image.fromarray(array[:, :, 0] if array.shape[-1] == 1 else array)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def png_bytes(array: np.ndarray) -> bytes:
    """The PNG encoding of an H x W x C uint8 array (for downloads)."""
    buffer = io.BytesIO()
    Image.fromarray(array[:, :, 0] if array.shape[-1] == 1 else array).save(buffer, format="PNG")
    return buffer.getvalue()
