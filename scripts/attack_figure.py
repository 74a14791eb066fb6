"""docs/attacks.png: original | encrypted | block-mean thumbnail | attacker's decryption, at both settings.

    python scripts/attack_figure.py [--out docs/attacks.png] [--images 200]

Top: grey Fashion-MNIST at M = 4 (the demo's setting), one of `--images` encrypted images the ciphertext-only
attack used, with public images of other classes as references. Bottom: a colour photograph at M = 16 (the
paper's setting), attacked alone with three other photographs as references. Fresh random keys; the titles
give what the attack recovered.
"""

from __future__ import annotations

import argparse

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from encvit.attacks import block_mean_thumbnail, ciphertext_only, decryption_quality, key_agreement  # noqa: E402
from encvit.attacks.datasets import fashion_attack_sets, public_photographs  # noqa: E402
from encvit.cipher.key import Key  # noqa: E402
from encvit.common.atomic import save_figure  # noqa: E402


def row(axes, plain, encrypted, recovered, block_size, label):
    thumbnail = block_mean_thumbnail(encrypted, block_size)
    decrypted = recovered.decrypt(encrypted)
    quality = decryption_quality(plain[None], decrypted[None])
    exact = "exact" if quality["images_exact"] == 1 else f"PSNR {quality['psnr_db']:.1f} dB"
    panels = [
        (plain, f"{label}: original"),
        (encrypted, "encrypted (what is shared)"),
        (thumbnail, "block-mean thumbnail (leaked)"),
        (decrypted, f"attacker's decryption ({exact})"),
    ]
    for ax, (image, title) in zip(axes, panels, strict=False):
        ax.imshow(image if image.ndim == 3 and image.shape[-1] == 3 else image, cmap="gray", interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/attacks.png")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--photo", default="astronaut", choices=sorted(public_photographs(16)))
    args = parser.parse_args(argv)
    if args.images < 2:
        parser.error(f"--images must be at least 2, got {args.images}")
    fig, axes = plt.subplots(2, 4, figsize=(12, 6.4))
    victims, _, references = fashion_attack_sets(args.images, 1000)
    key = Key.generate(4, 3)
    encrypted = key.encrypt(victims)
    recovered = ciphertext_only(encrypted, list(references), 4)
    share = key_agreement(key, recovered)["positions_same_pixel"]
    row(axes[0], victims[0], encrypted[0], recovered, 4, f"M = 4, {args.images} ciphertexts, key {share:.0%}")
    photos = public_photographs(16)
    photo = photos.pop(args.photo)
    key = Key.generate(16, 3)
    encrypted = key.encrypt(photo)
    recovered = ciphertext_only(encrypted[None], list(photos.values())[:3], 16)
    share = key_agreement(key, recovered)["positions_exact"]
    row(axes[1], photo, encrypted, recovered, 16, f"M = 16, 1 ciphertext, key {share:.0%}")
    fig.suptitle("What the key hides: the ciphertext-only attack with public reference images", fontsize=11)
    fig.tight_layout()
    save_figure(fig, args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
