"""The cipher demo: original | encrypted | decrypted for shipped samples, written to docs/cipher.png.

python scripts/cipher_figure.py [--out docs/cipher.png]
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from encvit.cipher.images import load_image
from encvit.cipher.key import Key
from encvit.common.shipped import DEMO_PASSPHRASE, SAMPLES_DIR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=Path(__file__).resolve().parents[1] / "docs" / "cipher.png")
    args = parser.parse_args()
    rows = [
        ("chelsea.png", 224, Key.generate(16, passphrase=DEMO_PASSPHRASE)),
        ("chelsea.png", 224, Key.generate(16, passphrase=DEMO_PASSPHRASE, scramble=True, neg_pos=True)),
        ("fashion-0.png", 32, Key.generate(4, passphrase=DEMO_PASSPHRASE)),
    ]
    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 3 * len(rows)))
    for (name, size, key), ax_row in zip(rows, axes, strict=False):
        image = load_image(SAMPLES_DIR / name, channels=3, resize=(size, size))
        encrypted = key.encrypt(image)
        decrypted = key.decrypt(encrypted)
        assert (decrypted == image).all(), "decryption must be exact"
        options = ", scrambled, neg-pos" if key.scramble_secret is not None else ""
        for ax, img, title in zip(
            ax_row,
            (image, encrypted, decrypted),
            ("original", f"encrypted (M={key.block_size}{options})", "decrypted (exact)"),
            strict=False,
        ):
            ax.imshow(img)
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        ax_row[0].set_ylabel(f"key {key.fingerprint}", fontsize=8)
    fig.suptitle(f"Block-wise pixel shuffling, keys from the passphrase '{DEMO_PASSPHRASE}'")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
