"""The block-wise image cipher of the paper: one secret permutation applied to every patch-sized block.

An image is cut into M x M blocks. Each block, flattened in (C, H, W) order, is C*M*M values; the key's
``pixel_permutation`` rearranges those values identically in every block, so values move across colour
channels. Two optional steps from the same line of work (Kiya et al.), off by default:

- **block scrambling**: the blocks themselves change places. For a grid of gh x gw blocks numbered in row-major
  order, the permutation is the stable argsort of gh*gw big-endian 64-bit words read from
  SHAKE-256(scramble secret || "blocks|{gh}x{gw}"), so one 32-byte secret defines a permutation for every grid.
- **negative-positive transformation**: at key-chosen positions of the shuffled block, x -> max - x
  (255 for uint8, ``max_value`` = 1.0 by default for floats).

A key is made from a passphrase (scrypt, so the same passphrase and options give the same key) or from the
OS's randomness. ``encrypt`` and ``decrypt`` are one precomputed index gather over the whole batch.

Convention: encrypted block value k is the original block value ``pixel_permutation[k]`` (x' = P x), so the
patch embedding that sees encrypted blocks as the original one sees plain blocks is E' = E[:, permutation].

A key recovered by an attack (``encvit.attacks``) cannot know the scramble secret, only the block order of the
grids it has seen: such a key holds ``block_orders``, an explicit block permutation per grid size, instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..common.atomic import write_text
from ..common.errors import ConfigError, ImageError, KeyFileError, KeyMismatchError

KEY_FORMAT = "encvit-key"
KEY_VERSION = 1
_SCRYPT = dict(n=2**14, r=8, p=1, dklen=32)
# Above this many values per image (about 1180x1180x3) numpy arrays are rearranged block by block instead of
# gathered through cached index maps, whose cost (~56 bytes per value) would dwarf the image.
MAPPED_VALUES = 1 << 22
_CACHED_SIZES = 8  # index maps kept per key: the sizes of a training run, not every size a folder of photos has


def parse_key_json(text: str, source: str):
    """The JSON content of a key file; KeyFileError naming `source` if it is not JSON or nested too deeply."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise KeyFileError(f"{source} is not valid JSON (truncated or corrupt?): {exc}") from exc
    except RecursionError:
        raise KeyFileError(f"{source} is not a key file: its JSON is nested too deeply to read") from None


def _shake_words(secret: bytes, label: str, count: int) -> np.ndarray:
    """`count` pseudo-random 64-bit words derived from `secret` for the purpose named by `label`."""
    stream = hashlib.shake_256(secret + b"|" + label.encode()).digest(8 * count)
    return np.frombuffer(stream, dtype=">u8")


def _permutation(secret: bytes, label: str, n: int) -> np.ndarray:
    return np.argsort(_shake_words(secret, label, n), kind="stable").astype(np.int64)


@dataclass(frozen=True, eq=False)
class Key:
    """A secret block-wise key: block size, channels, pixel permutation and the optional steps."""

    block_size: int
    channels: int
    pixel_permutation: np.ndarray
    neg_pos: np.ndarray | None = None
    scramble_secret: bytes | None = None
    block_orders: dict | None = None  # {(grid_h, grid_w): block permutation}, for keys recovered by attacks
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        m, c = self.block_size, self.channels
        if not (isinstance(m, int) and m >= 1 and isinstance(c, int) and c >= 1):
            raise KeyFileError(f"block size and channels must be integers >= 1, got {m} and {c}")
        n = self.block_length
        perm = np.asarray(self.pixel_permutation, dtype=np.int64)
        if perm.shape != (n,) or not np.array_equal(np.sort(perm), np.arange(n)):
            raise KeyFileError(f"pixel_permutation must be a permutation of 0..{n - 1} (C*M*M = {c}*{m}*{m})")
        if np.array_equal(perm, np.arange(n)):
            raise KeyFileError("the identity permutation encrypts nothing and is refused")
        object.__setattr__(self, "pixel_permutation", perm)
        if self.neg_pos is not None:
            mask = np.asarray(self.neg_pos)
            if mask.shape != (n,) or not np.isin(mask, (0, 1)).all():
                raise KeyFileError(f"neg_pos must be {n} values of 0 or 1")
            object.__setattr__(self, "neg_pos", mask.astype(bool))
        if self.scramble_secret is not None and len(self.scramble_secret) != 32:
            raise KeyFileError("the block-scramble secret must be 32 bytes")
        if self.block_orders is not None:
            if self.scramble_secret is not None:
                raise KeyFileError("a key holds either a block-scramble secret or explicit block orders, not both")
            orders = {}
            for grid, order in self.block_orders.items():
                gh, gw = grid
                order = np.asarray(order, dtype=np.int64)
                if order.shape != (gh * gw,) or not np.array_equal(np.sort(order), np.arange(gh * gw)):
                    raise KeyFileError(f"the block order for grid {gh}x{gw} must be a permutation of 0..{gh * gw - 1}")
                orders[(int(gh), int(gw))] = order
            object.__setattr__(self, "block_orders", orders)

    # ---- making keys -------------------------------------------------------------------------------
    @classmethod
    def generate(
        cls,
        block_size: int = 16,
        channels: int = 3,
        *,
        passphrase: str | None = None,
        scramble: bool = False,
        neg_pos: bool = False,
    ) -> Key:
        """A new key: from `passphrase` (deterministic) or from the OS's randomness (passphrase None)."""
        if not (isinstance(block_size, int) and 1 <= block_size <= 256):
            raise ConfigError(f"--block-size must be an integer from 1 to 256, got {block_size!r}")
        if not (isinstance(channels, int) and 1 <= channels <= 4):
            raise ConfigError(f"--channels must be an integer from 1 to 4, got {channels!r}")
        n = channels * block_size * block_size
        if n < 2:
            raise ConfigError("a block of one value has only the identity permutation: use a larger block")
        if passphrase is not None:
            if not passphrase:
                raise ConfigError("the passphrase is empty")
            salt = f"{KEY_FORMAT}-v{KEY_VERSION}|M={block_size}|C={channels}|scramble={scramble}|negpos={neg_pos}"
            master = hashlib.scrypt(passphrase.encode(), salt=salt.encode(), **_SCRYPT)
        else:
            master = secrets.token_bytes(32)
        # Redraw in the (for small blocks, likely) case that the permutation came out as the identity.
        attempt = 0
        while True:
            perm = _permutation(master, f"pixels|{attempt}", n)
            if not np.array_equal(perm, np.arange(n)):
                break
            attempt += 1
        mask = (_shake_words(master, "negpos", n) & 1).astype(bool) if neg_pos else None
        scramble_secret = hashlib.shake_256(master + b"|blocks").digest(32) if scramble else None
        return cls(block_size, channels, perm, mask, scramble_secret)

    # ---- identity and files ------------------------------------------------------------------------
    @property
    def block_length(self) -> int:
        """C*M*M: the number of values in one block."""
        return self.channels * self.block_size * self.block_size

    @property
    def fingerprint(self) -> str:
        """A short SHA-256 of the key material: safe to show and to store beside results."""
        digest = hashlib.sha256(f"{KEY_FORMAT}|{self.block_size}|{self.channels}|".encode())
        digest.update(self.pixel_permutation.astype("<i8").tobytes())
        digest.update(b"|" + (np.packbits(self.neg_pos).tobytes() if self.neg_pos is not None else b"-"))
        digest.update(b"|" + (self.scramble_secret or b"-"))
        for (gh, gw), order in sorted((self.block_orders or {}).items()):  # absent for every generated key
            digest.update(f"|{gh}x{gw}|".encode() + order.astype("<i8").tobytes())
        return digest.hexdigest()[:12]

    def describe(self) -> str:
        """One line: block size, channels, options and fingerprint."""
        grids = ", ".join(f"{gh}x{gw}" for gh, gw in sorted(self.block_orders or {}))
        options = [
            name
            for name, on in (
                ("block scrambling", self.scramble_secret is not None),
                (f"block order known for grid(s) {grids}", bool(grids)),
                ("negative-positive", self.neg_pos is not None),
            )
            if on
        ]
        return (
            f"key {self.fingerprint}: {self.block_size}x{self.block_size} blocks, {self.channels} channels, "
            f"pixel shuffling of {self.block_length} values" + "".join(f", {o}" for o in options)
        )

    def to_dict(self) -> dict:
        """The key file's content."""
        return {
            "format": KEY_FORMAT,
            "version": KEY_VERSION,
            "block_size": self.block_size,
            "channels": self.channels,
            "pixel_permutation": self.pixel_permutation.tolist(),
            "neg_pos": None if self.neg_pos is None else self.neg_pos.astype(int).tolist(),
            "scramble_secret": None if self.scramble_secret is None else self.scramble_secret.hex(),
            **(
                {}
                if self.block_orders is None
                else {"block_orders": {f"{gh}x{gw}": order.tolist() for (gh, gw), order in self.block_orders.items()}}
            ),
            "fingerprint": self.fingerprint,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the key as a versioned JSON file, atomically and readable only by its owner."""
        path = Path(path)
        write_text(path, json.dumps(self.to_dict()) + "\n", mode=0o600)
        return path

    @classmethod
    def from_dict(cls, data: dict, source: str = "key") -> Key:
        """A key from a key file's content; anything edited, missing or of another version is refused."""
        if not isinstance(data, dict) or data.get("format") != KEY_FORMAT:
            raise KeyFileError(f'{source} is not an encvit key file (no "format": "{KEY_FORMAT}")')
        if data.get("version") != KEY_VERSION:
            raise KeyFileError(
                f"{source} has key format version {data.get('version')!r}; this encvit reads version {KEY_VERSION}"
            )
        missing = [
            k
            for k in ("block_size", "channels", "pixel_permutation", "neg_pos", "scramble_secret", "fingerprint")
            if k not in data
        ]
        if missing:
            raise KeyFileError(f"{source} lacks the field(s) {', '.join(missing)}")
        try:
            secret = None if data["scramble_secret"] is None else bytes.fromhex(data["scramble_secret"])
            orders = data.get("block_orders")
            if orders is not None:
                orders = {tuple(int(v) for v in grid.split("x")): np.asarray(order) for grid, order in orders.items()}
            key = cls(
                data["block_size"],
                data["channels"],
                np.asarray(data["pixel_permutation"]),
                None if data["neg_pos"] is None else np.asarray(data["neg_pos"]),
                secret,
                orders,
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise KeyFileError(f"{source} has a malformed field: {exc}") from exc
        except KeyFileError as exc:
            raise KeyFileError(f"{source}: {exc}") from exc
        if key.fingerprint != data["fingerprint"]:
            raise KeyFileError(
                f"{source} was edited or damaged: its content has fingerprint {key.fingerprint}, "
                f"the file says {data['fingerprint']}"
            )
        return key

    @classmethod
    def load(cls, path: str | os.PathLike) -> Key:
        """Read a key file written by `save`."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise KeyFileError(f"key file {path} not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyFileError(f"key file {path} is not readable: {exc}") from exc
        return cls.from_dict(parse_key_json(text, f"key file {path}"), f"key file {path}")

    def __eq__(self, other) -> bool:
        return isinstance(other, Key) and self.fingerprint == other.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    # ---- index maps --------------------------------------------------------------------------------
    def block_permutation(self, grid_h: int, grid_w: int) -> np.ndarray:
        """Which original block each encrypted block position holds (identity without scrambling)."""
        n = grid_h * grid_w
        if self.block_orders is not None:
            if (grid_h, grid_w) not in self.block_orders:
                raise KeyMismatchError(
                    f"key {self.fingerprint} knows the block order only for grid(s) "
                    f"{', '.join(f'{h}x{w}' for h, w in sorted(self.block_orders))}, "
                    f"not for {grid_h}x{grid_w} blocks"
                )
            return self.block_orders[(grid_h, grid_w)]
        if self.scramble_secret is None:
            return np.arange(n)
        return _permutation(self.scramble_secret, f"blocks|{grid_h}x{grid_w}", n)

    def check_fits(self, height: int, width: int, channels: int) -> None:
        """Raise ImageError unless an image of this size and channel count can be encrypted with this key."""
        m = self.block_size
        if channels != self.channels:
            raise ImageError(f"image has {channels} channel(s) but key {self.fingerprint} is for {self.channels}")
        if height % m or width % m or height == 0 or width == 0:
            raise ImageError(
                f"image size {width}x{height} (WxH) is not a multiple of the block size {m}: "
                f"resize to e.g. {max(m, width // m * m)}x{max(m, height // m * m)}"
            )
        if self.block_orders is not None:
            self.block_permutation(height // m, width // m)

    def _maps(self, height: int, width: int) -> dict:
        """Index maps for a C x H x W image: gathers for CHW and HWC layouts and the neg-pos masks."""
        if (height, width) in self._cache:
            return self._cache[(height, width)]
        c, m = self.channels, self.block_size
        gh, gw = height // m, width // m
        # Source positions of every block, one row per block, in (C, M, M) order within the block.
        blocks = np.arange(c * height * width).reshape(c, gh, m, gw, m).transpose(1, 3, 0, 2, 4).reshape(gh * gw, -1)
        encrypted = blocks[self.block_permutation(gh, gw)][:, self.pixel_permutation]
        chw = encrypted.reshape(gh, gw, c, m, m).transpose(2, 0, 3, 1, 4).reshape(-1)
        # The same gather for an H x W x C array: map both sides from CHW to HWC positions.
        hwc_of_chw = np.arange(c * height * width).reshape(height, width, c).transpose(2, 0, 1).reshape(-1)
        hwc = np.empty_like(chw)
        hwc[hwc_of_chw] = hwc_of_chw[chw]
        maps = {"chw": chw, "chw_inverse": np.argsort(chw), "hwc": hwc, "hwc_inverse": np.argsort(hwc)}
        if self.neg_pos is not None:
            in_block = np.broadcast_to(self.neg_pos.reshape(c, 1, m, 1, m), (c, gh, m, gw, m)).reshape(-1)
            maps["mask_chw"] = in_block
            maps["mask_hwc"] = in_block[np.argsort(hwc_of_chw)]
        self._remember((height, width), maps)
        return maps

    def _remember(self, size: tuple, maps: dict) -> None:
        """Cache index maps for a size, keeping the most recent few (each costs ~40 bytes per image value)."""
        self._cache[size] = maps
        while len(self._cache) > _CACHED_SIZES:
            self._cache.pop(next(iter(self._cache)))

    def _torch_maps(self, height: int, width: int, device: torch.device) -> dict:
        key = (height, width, str(device))
        if key not in self._cache:
            self._remember(
                key,
                {
                    name: torch.from_numpy(np.ascontiguousarray(a)).to(device)
                    for name, a in self._maps(height, width).items()
                },
            )
        return self._cache[key]

    # ---- encrypt / decrypt -------------------------------------------------------------------------
    def encrypt(self, images, max_value: float = 1.0):
        """Encrypt a numpy HxWxC (or NxHxWxC) array, a PIL image, or a torch CxHxW / NxCxHxW tensor.

        uint8 values flip as 255 - x; float values as `max_value` - x. The result has the input's type.
        """
        return self._apply(images, inverse=False, max_value=max_value)

    def decrypt(self, images, max_value: float = 1.0):
        """Undo `encrypt` exactly (for floats, up to one rounding where neg-pos is on)."""
        return self._apply(images, inverse=True, max_value=max_value)

    def _apply(self, images, inverse: bool, max_value: float):
        from PIL import Image

        if isinstance(images, Image.Image):
            array = np.asarray(images)
            return Image.fromarray(self._apply_numpy(array, inverse, max_value), mode=images.mode)
        if isinstance(images, np.ndarray):
            return self._apply_numpy(images, inverse, max_value)
        if isinstance(images, torch.Tensor):
            return self._apply_torch(images, inverse, max_value)
        raise TypeError(f"cannot encrypt a {type(images).__name__}: use a numpy array, PIL image or torch tensor")

    def _apply_numpy(self, array: np.ndarray, inverse: bool, max_value: float) -> np.ndarray:
        if array.ndim == 2:
            array = array[:, :, None]
        if array.ndim not in (3, 4):
            raise ImageError(f"expected an HxWxC or NxHxWxC array, got shape {array.shape}")
        h, w, c = array.shape[-3:]
        self.check_fits(h, w, c)
        top = 255 if array.dtype == np.uint8 else max_value
        if c * h * w > MAPPED_VALUES:
            return self._apply_blockwise(array, inverse, top)
        maps = self._maps(h, w)
        flat = array.reshape(*array.shape[:-3], -1)
        if inverse:
            if self.neg_pos is not None:
                flat = np.where(maps["mask_hwc"], top - flat, flat).astype(array.dtype, copy=False)
            out = np.take(flat, maps["hwc_inverse"], axis=-1)
        else:
            out = np.take(flat, maps["hwc"], axis=-1)
            if self.neg_pos is not None:
                out = np.where(maps["mask_hwc"], top - out, out).astype(array.dtype, copy=False)
        return out.reshape(array.shape)

    def _apply_blockwise(self, array: np.ndarray, inverse: bool, top) -> np.ndarray:
        """The same cipher as a rearrangement into (blocks, C*M*M) rows: no index map of the image's size, so
        memory stays a few copies of the image (the maps cost ~56 bytes per value to build; 6.7 GB for 6000x6000)."""
        h, w, c = array.shape[-3:]
        m, lead = self.block_size, array.shape[:-3]
        gh, gw, n = h // m, w // m, len(lead)
        outer = tuple(range(n))
        blocks = array.reshape(*lead, gh, m, gw, m, c).transpose(*outer, n, n + 2, n + 4, n + 1, n + 3)
        blocks = blocks.reshape(*lead, gh * gw, c * m * m)
        order = self.block_permutation(gh, gw)
        scrambled = self.scramble_secret is not None or self.block_orders is not None
        if inverse:
            if self.neg_pos is not None:
                blocks = np.where(self.neg_pos, top - blocks, blocks).astype(array.dtype, copy=False)
            if scrambled:
                blocks = np.take(blocks, np.argsort(order), axis=-2)
            out = np.take(blocks, np.argsort(self.pixel_permutation), axis=-1)
        else:
            out = np.take(blocks, self.pixel_permutation, axis=-1)
            if scrambled:
                out = np.take(out, order, axis=-2)
            if self.neg_pos is not None:
                out = np.where(self.neg_pos, top - out, out).astype(array.dtype, copy=False)
        out = out.reshape(*lead, gh, gw, c, m, m).transpose(*outer, n, n + 3, n + 1, n + 4, n + 2)
        return out.reshape(array.shape)

    def _apply_torch(self, images: torch.Tensor, inverse: bool, max_value: float) -> torch.Tensor:
        if images.ndim not in (3, 4):
            raise ImageError(f"expected a CxHxW or NxCxHxW tensor, got shape {tuple(images.shape)}")
        c, h, w = images.shape[-3:]
        self.check_fits(h, w, c)
        maps = self._torch_maps(h, w, images.device)
        flat = images.reshape(*images.shape[:-3], -1)
        top = 255 if images.dtype == torch.uint8 else max_value
        if inverse:
            if self.neg_pos is not None:
                flat = torch.where(maps["mask_chw"], top - flat, flat)
            out = self._gather(flat, "chw_inverse", maps)
        else:
            out = self._gather(flat, "chw", maps)
            if self.neg_pos is not None:
                out = torch.where(maps["mask_chw"], top - out, out)
        return out.reshape(images.shape)

    def _gather(self, flat: torch.Tensor, name: str, maps: dict) -> torch.Tensor:
        """out[..., i] = flat[..., index[i]] for the named index map."""
        if flat.device.type == "cpu" and not flat.requires_grad and flat.dtype not in (torch.bfloat16,):
            # On CPU, numpy's take along the last axis is ~4x faster than torch's index_select
            # (benchmarks/bench_cipher.py); both are one gather with no Python loop.
            return torch.from_numpy(np.take(flat.numpy(), maps[name].numpy(), axis=-1))
        return flat.index_select(-1, maps[name])


class PerImageKeys:
    """One fresh random pixel permutation for every image, every time it is encrypted: no key is shared
    between images, so there is no key for a model to learn, nor for an attacker to recover.

    The reference point of the security study (Sirichotedumrong and Kiya found such schemes robust to the
    attacks that break a shared key). There is no decryption: the permutations are drawn and forgotten.
    """

    def __init__(self, block_size: int, channels: int = 3, seed: int = 0):
        if not (isinstance(block_size, int) and block_size >= 1 and channels * block_size * block_size >= 2):
            raise ConfigError(
                f"per-image keys need blocks of at least two values, got M = {block_size}, C = {channels}"
            )
        self.block_size, self.channels = block_size, channels
        self.block_length = channels * block_size * block_size
        self._generator = torch.Generator().manual_seed(seed)
        self.fingerprint = f"per-image-{block_size}x{block_size}x{channels}"

    def describe(self) -> str:
        """One line: block size, channels and that every image gets its own key."""
        return (
            f"one fresh key per image: {self.block_size}x{self.block_size} blocks, {self.channels} channels, "
            f"pixel shuffling of {self.block_length} values"
        )

    def check_fits(self, height: int, width: int, channels: int) -> None:
        """Raise ImageError unless images of this size and channel count can be encrypted."""
        Key(self.block_size, self.channels, np.roll(np.arange(self.block_length), 1)).check_fits(
            height, width, channels
        )

    def encrypt(self, images):
        """Encrypt an N x C x H x W torch tensor or an N x H x W x C numpy array, each image with its own key."""
        if isinstance(images, np.ndarray):
            return (
                self.encrypt(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2))
                .permute(0, 2, 3, 1)
                .numpy()
            )
        n, c, h, w = images.shape
        self.check_fits(h, w, c)
        m = self.block_size
        grid = (h // m) * (w // m)
        blocks = images.reshape(n, c, h // m, m, w // m, m).permute(0, 2, 4, 1, 3, 5).reshape(n, grid, -1)
        keys = torch.argsort(torch.rand(n, self.block_length, generator=self._generator), dim=1).to(images.device)
        shuffled = torch.gather(blocks, 2, keys[:, None, :].expand(n, grid, self.block_length))
        return shuffled.reshape(n, h // m, w // m, c, m, m).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)


def fingerprint_of(key: Key | None) -> str:
    """The key's fingerprint, or "plain" for no key."""
    return key.fingerprint if key is not None else "plain"
