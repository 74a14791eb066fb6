"""The ciphertext-only attack at the paper's setting (16 x 16 x 3 blocks) on every colour photograph that
scikit-image and scikit-learn ship, each attacked alone with three of the others as references.

    python scripts/attack_photos.py [--restarts 2] [--seed 0] [--neg-pos] [--out docs/attack-photos.md]

Prints (and writes) one Markdown row per photograph: the fraction of the key recovered, PSNR and SSIM of the
attacker's decryption, and seconds. A fresh random key for every photograph.
"""

from __future__ import annotations

import argparse
import time

from encvit.attacks import ciphertext_only, decryption_quality, key_agreement
from encvit.attacks.datasets import public_photographs
from encvit.cipher.key import Key
from encvit.common.atomic import write_text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--restarts", type=int, default=2, help="starts of the graph matching (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--neg-pos", action="store_true", help="keys with negative-positive flips")
    parser.add_argument("--out", help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    if args.restarts < 1:
        parser.error(f"--restarts must be at least 1, got {args.restarts}")
    photos = public_photographs(16)
    lines = [
        "| photograph | size | references | key exact | key, same pixel | PSNR (dB) | SSIM | seconds |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    for name, photo in photos.items():
        references = {n: p for n, p in photos.items() if n != name}
        chosen = list(references)[:3]
        key = Key.generate(16, 3, neg_pos=args.neg_pos)
        encrypted = key.encrypt(photo)
        start = time.perf_counter()
        recovered = ciphertext_only(
            encrypted[None],
            [references[n] for n in chosen],
            16,
            neg_pos=args.neg_pos,
            restarts=args.restarts,
            seed=args.seed,
        )
        seconds = time.perf_counter() - start
        agreement = key_agreement(key, recovered)
        quality = decryption_quality(photo[None], recovered.decrypt(encrypted)[None])
        line = (
            f"| {name} | {photo.shape[1]}x{photo.shape[0]} | {', '.join(chosen)} | "
            f"{agreement['positions_exact']:.3f} | {agreement['positions_same_pixel']:.3f} | "
            f"{quality['psnr_db']:.1f} | {quality['ssim']:.3f} | {seconds:.0f} |"
        )
        lines.append(line)
        print(line, flush=True)
    if args.out:
        write_text(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
