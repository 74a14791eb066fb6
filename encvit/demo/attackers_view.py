"""The demo's "Attacker's view": what an eavesdropper holds, and what the ciphertext-only attack makes of it.

The eavesdropper sees the data owner's encrypted images and knows the cipher (block size, which options are
on), never the key. The images chosen on the demo's main page are attacked together with more ciphertexts
of the same owner (fashion5k images encrypted with the same key), using public Fashion-MNIST images of other
classes as the attack's reference (`encvit.attacks.datasets`). The app (``app/pages/3_Attacker's_view.py``)
only lays these out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..attacks import best_pose_quality, block_mean_thumbnail, ciphertext_only, decryption_quality, key_agreement
from ..cipher.images import as_batch
from ..cipher.key import Key
from ..common.errors import AttackError, ConfigError
from ..common.shipped import DEMO_PASSPHRASE, list_samples

COLLECTED_MAX = 200  # the most ciphertexts the page lets the eavesdropper collect
REFERENCES = 1000  # public reference images the attack learns natural-image statistics from
# 16x16x3 blocks (768 values) on the demo's 32x32 images took 25-45 s and recovered nothing (2 cores, loaded):
# beyond 8x8x3 the attack belongs on the command line, not in a page with a 30 s budget.
MAX_BLOCK_VALUES = 192


@dataclass(frozen=True)
class AttackOutcome:
    """What the ciphertext-only attack recovered from the eavesdropper's ciphertexts, and how well it did."""

    recovered: Key
    from_page: int  # the visitor's images, first in the batch
    collected: int  # the owner's further ciphertexts the attacker held
    references: int
    assumed: tuple[str, ...]  # the cipher's options the attack assumed
    agreement: dict[str, float]
    quality: dict[str, float]  # the visitor's images as the attacker decrypts them
    collected_quality: dict[str, float] | None
    encrypted_quality: dict[str, float]  # the visitor's ciphertexts scored as if they were decryptions
    reconstructions: np.ndarray  # the visitor's images as the attacker decrypts them
    psnr_db: list[float]  # per visitor image; an exact decryption counts as 100 dB
    seconds: float
    pose_quality: dict | None = None  # with block scrambling: the decryptions scored in their best pose

    @property
    def used(self) -> int:
        """How many encrypted images the attack used."""
        return self.from_page + self.collected


def default_target(count: int = 3):
    """(key, images) the main page starts with: the demo passphrase's key and the first `count` shipped samples
    whose label is a class of the shipped comparison, at its input size."""
    from ..models.adapters import read_adapter
    from ..models.predict import find_runs, shipped_comparison
    from .home import geometry, sample_images

    shape = geometry(
        {name: read_adapter(run / "adapter.safetensors")[0] for name, run in find_runs(shipped_comparison()).items()}
    )
    key = Key.generate(shape.patch_size, shape.channels, passphrase=DEMO_PASSPHRASE)
    return key, sample_images([s for s in list_samples() if s.label in shape.class_names][:count], shape)


def attack_sets(collected_max: int = COLLECTED_MAX, references: int = REFERENCES) -> tuple[np.ndarray, np.ndarray]:
    """(the owner's further plain images, the attacker's public reference images), both N x 32 x 32 x 3 uint8."""
    from ..attacks.datasets import fashion_attack_sets

    collected, _, reference = fashion_attack_sets(collected_max, references)
    return collected, reference


def holdings(key: Key, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What an eavesdropper holds of N x H x W x C plain images: their encryptions and the ciphertexts' block-mean
    thumbnails (uint8, N x H/M x W/M x 1): the plain images' own, as shuffling keeps a block's mean (with
    block scrambling, in the scrambled order; negative-positive flips change the means)."""
    encrypted = key.encrypt(as_batch(images))
    thumbnails = np.rint(block_mean_thumbnail(encrypted, key.block_size)).astype(np.uint8)[..., None]
    return encrypted, thumbnails


def assumed_options(key: Key) -> tuple[str, ...]:
    """The cipher's options the attack assumes: those the key uses (the cipher is public, the key is not)."""
    scramble = key.scramble_secret is not None or key.block_orders is not None
    return tuple(
        name for name, on in (("negative-positive", key.neg_pos is not None), ("block scrambling", scramble)) if on
    )


def check_attackable(key: Key) -> None:
    """AttackError unless the page can attack this key within its time budget."""
    if key.block_length > MAX_BLOCK_VALUES:
        raise AttackError(
            f"key {key.fingerprint} shuffles {key.block_length} values per block "
            f"({key.block_size}x{key.block_size}x{key.channels}); this page attacks at most "
            f"{MAX_BLOCK_VALUES} (8x8x3) in its time budget: run `encvit attack ciphertext-only` instead"
        )


def run_attack(
    key: Key, images: np.ndarray, collected: np.ndarray, reference: np.ndarray, restarts: int = 2, seed: int = 0
) -> AttackOutcome:
    """Encrypt the visitor's `images` and the `collected` plain images with `key`, recover the key from the
    ciphertexts alone with `reference` images, and score the recovered key and its decryptions."""
    images = as_batch(images)
    if len(collected) and collected.shape[1:] != images.shape[1:]:
        raise ConfigError(f"the collected images are {collected.shape[1:]}, the page's {images.shape[1:]}")
    check_attackable(key)
    plain = np.concatenate([images, collected]) if len(collected) else images
    encrypted = key.encrypt(plain)
    assumed = assumed_options(key)
    started = time.perf_counter()
    recovered = ciphertext_only(
        encrypted,
        list(reference),
        key.block_size,
        neg_pos="negative-positive" in assumed,
        scramble="block scrambling" in assumed,
        restarts=restarts,
        seed=seed,
    )
    seconds = time.perf_counter() - started
    grid = (
        (images.shape[1] // key.block_size, images.shape[2] // key.block_size)
        if "block scrambling" in assumed
        else None
    )
    decrypted = recovered.decrypt(encrypted)
    ours, theirs = slice(0, len(images)), slice(len(images), None)
    return AttackOutcome(
        recovered=recovered,
        from_page=len(images),
        collected=len(collected),
        references=len(reference),
        assumed=assumed,
        agreement=key_agreement(key, recovered, grid),
        quality=decryption_quality(plain[ours], decrypted[ours]),
        collected_quality=decryption_quality(plain[theirs], decrypted[theirs]) if len(collected) else None,
        encrypted_quality=decryption_quality(plain[ours], encrypted[ours]),
        reconstructions=decrypted[ours],
        psnr_db=[
            decryption_quality(p[None], d[None])["psnr_db"] for p, d in zip(plain[ours], decrypted[ours], strict=True)
        ],
        seconds=seconds,
        pose_quality=best_pose_quality(plain[ours], decrypted[ours], key.block_size) if grid else None,
    )


def key_rows(outcome: AttackOutcome) -> pd.DataFrame:
    """The share of the key recovered, part by part, as percentages."""
    names = {
        "positions_exact": "positions, exact",
        "positions_same_pixel": "positions, right pixel (any channel)",
        "neg_pos_mask": "negative-positive mask",
        "block_order": "block order",
    }
    return pd.DataFrame(
        [{"part of the key": names[k], "recovered": f"{100 * v:.0f}%"} for k, v in outcome.agreement.items()]
    ).set_index("part of the key")


def quality_rows(outcome: AttackOutcome) -> pd.DataFrame:
    """Decryption quality of the visitor's images (and of the collected ones), beside their ciphertexts' own."""

    def row(name, q):
        return {
            "images": name,
            "decrypted exactly": f"{100 * q['images_exact']:.0f}%",
            "values right": f"{100 * q['values_right']:.0f}%",
            "PSNR (dB)": f"{q['psnr_db']:.1f}",
            "SSIM": f"{q['ssim']:.2f}",
        }

    rows = [row(f"yours, decrypted by the attacker ({outcome.from_page})", outcome.quality)]
    if outcome.collected_quality is not None:
        rows.append(row(f"collected, decrypted by the attacker ({outcome.collected})", outcome.collected_quality))
    if outcome.pose_quality is not None:
        rows.append(
            {
                "images": f"yours, decrypted by the attacker, in the best pose ({outcome.from_page})",
                "decrypted exactly": f"{100 * outcome.pose_quality['images_exact_any_pose']:.0f}%",
                "values right": "",
                "PSNR (dB)": f"{outcome.pose_quality['psnr_db_any_pose']:.1f}",
                "SSIM": "",
            }
        )
    rows.append(row(f"yours, encrypted: before the attack ({outcome.from_page})", outcome.encrypted_quality))
    return pd.DataFrame(rows).set_index("images")


def psnr_caption(psnr_db: float) -> str:
    """An image's PSNR as the page writes it: "exact" for a perfect decryption."""
    return "decrypted exactly" if psnr_db >= 100 else f"PSNR {psnr_db:.1f} dB"
