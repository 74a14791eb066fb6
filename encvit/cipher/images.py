"""Reading and writing images for the cipher: validated on read, lossless PNG on write."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..common.atomic import atomic_path
from ..common.errors import ImageError, OutputError

# Beyond this an image (or a --resize) is refused, its size read from the header before decoding: at the limit
# the image work adds about 0.4 GB to `encvit encrypt`'s own 1 GB (docs/cipher.md).
MAX_PIXELS = 40_000_000


def open_image(source, name: str | None = None) -> Image.Image:
    """Open and fully decode an image from a path, bytes or file object; ImageError names a bad one."""
    name = name or (str(source) if isinstance(source, (str, os.PathLike)) else "image")
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        with warnings.catch_warnings():
            # Pillow warns from 89 M pixels; the lower MAX_PIXELS below refuses those in one line instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source)
        with image:
            if image.width * image.height > MAX_PIXELS:
                raise ImageError(f"{name} is {image.width}x{image.height} pixels; at most {MAX_PIXELS:,} are accepted")
            image.load()
            return image.copy()
    except FileNotFoundError:
        raise ImageError(f"{name}: file not found") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(
            f"{name} is refused before decoding ({exc}); at most {MAX_PIXELS:,} pixels are accepted"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        detail = str(exc).replace(repr(source), name)  # Pillow names a file object as <_io.BytesIO object at 0x...>
        raise ImageError(f"{name} is not a readable image ({type(exc).__name__}: {detail})") from exc


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


@contextlib.contextmanager
def png_set(folder: str | os.PathLike) -> Iterator[Callable[[np.ndarray, str], Path]]:
    """Yield `write(array, name)`, which writes a PNG for `folder`; the files appear there together when the block
    ends, and on any failure none of them does (files they would replace are kept, a folder made for them removed)."""
    folder = Path(folder)
    made = next((p for p in [folder, *folder.parents][::-1] if not p.exists()), None)
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder, prefix=".encvit-staging-"))
    names: list[str] = []

    def write(array: np.ndarray, name: str) -> Path:
        try:
            save_png(array, staging / name)
        except OSError as exc:  # e.g. a full disk
            raise OutputError(
                f"{folder / name} could not be written ({exc.strerror or exc}); none of the new "
                f"files were kept and {folder} is as it was"
            ) from exc
        names.append(name)
        return folder / name

    try:
        yield write
        _move_in(staging, folder, names)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)


def _move_in(staging: Path, folder: Path, names: list[str]) -> None:
    """Rename the staged files into `folder`; if one rename fails, put back what was there before."""
    done: list[tuple[Path, Path | None]] = []
    try:
        for name in names:
            target, backup = folder / name, None
            if target.exists():
                backup = staging / f".previous-{name}"
                os.replace(target, backup)
            done.append((target, backup))
            os.replace(staging / name, target)
    except OSError as exc:
        for target, backup in reversed(done):
            if backup is not None:
                os.replace(backup, target)
            elif target.exists():
                target.unlink()
        raise OutputError(
            f"the new files could not be moved into {folder} ({exc.strerror or exc}); none of them "
            f"were kept and {folder} is as it was"
        ) from exc


def as_batch(images) -> np.ndarray:
    """A list of HxWxC arrays or an NxHxWxC array as one uint8 NxHxWxC array (all images of one size)."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return images
    images = [np.asarray(i) for i in images]
    if not images:
        raise ImageError("no images were given")
    images = [i[:, :, None] if i.ndim == 2 else i for i in images]
    shapes = {i.shape for i in images}
    if len(shapes) > 1:
        raise ImageError(f"the images have different sizes {sorted(shapes)}: an attack needs one size per call")
    return np.stack(images)


def colour_images(images: np.ndarray) -> int:
    """How many of N x H x W x C images have colour (channels that differ somewhere)."""
    images = as_batch(images)
    return int((images != images[..., :1]).reshape(len(images), -1).any(axis=1).sum())
