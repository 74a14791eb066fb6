"""How much of a key an attack recovered, and how good the attacker's decryptions are.

Key agreement counts positions; decryption quality uses scikit-image's PSNR and SSIM, the metrics of the
literature on attacks against learnable image encryption.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ..cipher.images import as_batch
from ..cipher.key import Key
from ..common.errors import KeyMismatchError


def key_agreement(true_key: Key, recovered: Key, grid: tuple[int, int] | None = None) -> dict[str, float]:
    """Fractions of the key recovered: exact positions; positions put in the right pixel whatever the channel
    (all an attack can tell for a grey image, whose channels are identical); the negative-positive mask; and,
    for a `grid`, the block order."""
    if (true_key.block_size, true_key.channels) != (recovered.block_size, recovered.channels):
        raise KeyMismatchError(f"the keys differ in shape: {true_key.describe()} / {recovered.describe()}")
    pixels = true_key.block_size**2
    true_perm, found = true_key.pixel_permutation, recovered.pixel_permutation
    scores = {
        "positions_exact": float(np.mean(true_perm == found)),
        "positions_same_pixel": float(np.mean(true_perm % pixels == found % pixels)),
    }
    if true_key.neg_pos is not None or recovered.neg_pos is not None:
        n = true_key.block_length
        true_mask = true_key.neg_pos if true_key.neg_pos is not None else np.zeros(n, bool)
        found_mask = recovered.neg_pos if recovered.neg_pos is not None else np.zeros(n, bool)
        scores["neg_pos_mask"] = float(np.mean(true_mask == found_mask))
    if grid is not None:
        scores["block_order"] = float(np.mean(true_key.block_permutation(*grid) == recovered.block_permutation(*grid)))
    return scores


def decryption_quality(plain, decrypted) -> dict[str, float]:
    """Share of images decrypted exactly, share of values right, mean PSNR (dB) and mean SSIM of the
    attacker's decryptions against the plain images (N x H x W x C uint8 each)."""
    plain, decrypted = as_batch(plain), as_batch(decrypted)
    if plain.shape != decrypted.shape:
        raise KeyMismatchError(f"plain images {plain.shape} and decryptions {decrypted.shape} differ in shape")
    exact = (plain == decrypted).reshape(len(plain), -1).all(axis=1)
    # An exact decryption has infinite PSNR; it counts as 100 dB so that means stay finite.
    psnr = [
        100.0 if same else peak_signal_noise_ratio(p, d, data_range=255)
        for p, d, same in zip(plain, decrypted, exact, strict=True)
    ]
    ssim = [
        structural_similarity(p, d, data_range=255, channel_axis=2, win_size=_window(p))
        for p, d in zip(plain, decrypted, strict=False)
    ]
    return {
        "images_exact": float(exact.mean()),
        "values_right": float(np.mean(plain == decrypted)),
        "psnr_db": float(np.mean(psnr)),
        "ssim": float(np.mean(ssim)),
    }


def image_poses(images: np.ndarray, block_size: int):
    """Every pose of a batch (N x H x W x C): the image's rotations and reflections (8 if square, else 4)
    combined with every cyclic shift by whole blocks, the same for all images; yields (name, moved images)."""
    _, height, width, _ = images.shape
    turns = range(4) if height == width else (0, 2)
    for turn in turns:
        turned = np.rot90(images, turn, axes=(1, 2))
        for mirrored in (False, True):
            base = turned[:, :, ::-1] if mirrored else turned
            for down in range(0, height, block_size):
                for right in range(0, width, block_size):
                    name = f"rot{90 * turn}{'+mirror' if mirrored else ''}+shift({down},{right})"
                    yield name, np.roll(base, (down, right), axis=(1, 2))


def best_pose_quality(plain, decrypted, block_size: int) -> dict[str, float | str]:
    """Decryption quality up to one pose (`image_poses`) for all images, the pose that fits best chosen with the
    plain images: what the attacker recovered when it got everything but the whole image's orientation or a
    wrap-around shift, which a viewer undoes at a glance. A measurement for the defender, not part of an attack."""
    plain, decrypted = as_batch(plain), as_batch(decrypted).astype(np.float64)
    best_name, best_mse = "", None
    for name, moved in image_poses(plain, block_size):
        mse = ((moved.astype(np.float64) - decrypted) ** 2).reshape(len(plain), -1).mean(axis=1)
        if best_mse is None or mse.mean() < best_mse.mean():
            best_name, best_mse = name, mse
    # An exact decryption has infinite PSNR; it counts as 100 dB, as in decryption_quality.
    psnr = np.where(best_mse == 0, 100.0, 10 * np.log10(255.0**2 / np.maximum(best_mse, 1e-12)))
    return {
        "images_exact_any_pose": float(np.mean(best_mse == 0)),
        "psnr_db_any_pose": float(psnr.mean()),
        "pose": best_name,
    }


def _window(image: np.ndarray) -> int:
    """SSIM's window: the default 7, or the largest odd size a small image allows."""
    side = min(image.shape[:2])
    return 7 if side >= 7 else max(3, side - (1 - side % 2))


def plain_model_accuracy(images, labels, run=None, batch_size: int = 256) -> float:
    """Accuracy (%) of a model trained on plain images when it classifies `images` (the attacker's
    decryptions, N x H x W x C uint8) with their true `labels`: by default the shipped MeLo run on plain fashion5k."""
    from pathlib import Path

    import torch

    from ..models.adapters import load_classifier
    from ..models.predict import shipped_comparison
    from ..models.preprocess import BatchPreprocess

    path = Path(shipped_comparison() / "melo-plain" if run is None else run)
    path = path / "adapter.safetensors" if path.is_dir() else path
    model, info = load_classifier(path)
    preprocess = BatchPreprocess(info.image_size, info.channels, None, tuple(info.mean), tuple(info.std))
    batch = torch.from_numpy(as_batch(images)).permute(0, 3, 1, 2)
    labels = torch.as_tensor(np.asarray(labels))
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(batch), batch_size):
            logits = model(preprocess(batch[start : start + batch_size]))
            correct += int((logits.argmax(1) == labels[start : start + batch_size]).sum())
    return 100.0 * correct / len(batch)
