"""Attack speed: how long each key-recovery attack takes, against the goals, with what it recovers.

    python benchmarks/bench_attack.py [--images 200] [--photo astronaut] [--crop N] [--repeats 3] [--warmup 0]
                                      [--threads N] [--clock wall|cpu] [--json PATH]

Compared in rotating order every round (a fresh random key each round): the ciphertext-only attack on
`--images` grey 32 x 32 Fashion-MNIST images at M = 4 (goal: 30 s for 200), on one colour photograph at M = 16
(goal: 180 s for a 512 x 512 one; the other shipped photographs are its references), known-plaintext from one
pair of that photograph and chosen-plaintext from two probes. The baseline is encrypting the same images,
so each attack's cost also reads as a multiple of the cipher's own. Times are median (min–max) over rounds.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from encvit.attacks import (
    chosen_plaintext,
    ciphertext_only,
    decryption_quality,
    key_agreement,
    known_plaintext,
    make_probes,
)
from encvit.attacks.datasets import fashion_attack_sets, public_photographs
from encvit.cipher.key import Key
from encvit.common.timing import (
    CLOCKS,
    Report,
    add_repeat_options,
    argv_of,
    check_repeat_options,
    compare,
    interleave,
    markdown_table,
    spread_cell,
)

GOALS = {"ciphertext-only, M = 4": 30.0, "ciphertext-only, M = 16": 180.0}


def scenarios(images: int, photo: str, crop: int | None = None, photo_block: int = 16) -> dict:
    """The attacks to time: each a callable that draws a key, attacks and records what it recovered."""
    grey, _, reference = fashion_attack_sets(images, references=500)
    m = photo_block
    photos = public_photographs(m)
    target = photos.pop(photo)
    target = target[:crop, :crop] if crop else target
    references = list(photos.values())[:3]
    quality: dict[str, list[dict]] = {}

    def record(name, key, recovered, plain, encrypted):
        scores = {**key_agreement(key, recovered), **decryption_quality(plain, recovered.decrypt(encrypted))}
        quality.setdefault(name, []).append(scores)

    def coa_grey():
        key = Key.generate(4, 3)
        encrypted = key.encrypt(grey)
        record("ciphertext-only, M = 4", key, ciphertext_only(encrypted, list(reference), 4), grey, encrypted)

    def coa_photo():
        key = Key.generate(m, 3)
        encrypted = key.encrypt(target)
        record(
            "ciphertext-only, M = 16", key, ciphertext_only([encrypted], references, m), target[None], encrypted[None]
        )

    def known():
        key = Key.generate(m, 3, neg_pos=True)
        encrypted = key.encrypt(target)
        record("known-plaintext, M = 16", key, known_plaintext([target], [encrypted]), target[None], encrypted[None])

    def chosen():
        key = Key.generate(m, 3, neg_pos=True)
        recovered = chosen_plaintext([key.encrypt(p) for p in make_probes(m, 3)])
        record("chosen-plaintext, M = 16", key, recovered, target[None], key.encrypt(target)[None])

    encrypt_key = Key.generate(m, 3)
    timed = {
        "encrypt (baseline)": lambda: (Key.generate(4, 3).encrypt(grey), encrypt_key.encrypt(target)),
        "ciphertext-only, M = 4": coa_grey,
        "ciphertext-only, M = 16": coa_photo,
        "known-plaintext, M = 16": known,
        "chosen-plaintext, M = 16": chosen,
    }
    return (
        timed,
        quality,
        {
            "grey_images": len(grey),
            "photo": photo,
            "photo_size": list(target.shape[:2]),
            "references": len(references),
            "photo_block": m,
        },
    )


def table(result: dict, quality: dict) -> str:
    rows = []
    for name, summary in result["summary"].items():
        if name == "encrypt (baseline)":
            rows.append([name, spread_cell(summary, digits=3), "1x", "", "", "", ""])
            continue
        scores = quality[name]
        goal = GOALS.get(name)
        rows.append(
            [
                name,
                spread_cell(summary, digits=1),
                spread_cell(result["ratios"][name], "x", digits=0),
                f"{goal:.0f} s" if goal else "seconds",
                f"{np.median([s['positions_same_pixel'] for s in scores]):.3f}",
                f"{np.median([s['images_exact'] for s in scores]):.2f}",
                f"{np.median([s['psnr_db'] for s in scores]):.1f}",
            ]
        )
    return markdown_table(
        ["attack", "seconds", "/ encrypt", "goal", "key, same pixel", "images exact", "PSNR (dB)"], rows
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="grey images for the M = 4 attack (default 200)")
    parser.add_argument(
        "--photo",
        default="astronaut",
        choices=sorted(public_photographs(16)),
        help="the photograph attacked at M = 16 (default astronaut, 512 x 512)",
    )
    parser.add_argument(
        "--photo-block",
        type=int,
        default=16,
        choices=(4, 8, 16),
        help="block size of the photograph's key (default 16; smaller for quick runs)",
    )
    parser.add_argument(
        "--crop",
        type=int,
        default=None,
        help="attack only the top-left CROP x CROP of the photograph (a multiple of 16; quick runs)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    add_repeat_options(parser, repeats=3, warmup=0)
    args = parser.parse_args(argv)
    check_repeat_options(args, parser)
    if args.images < 2:
        parser.error(f"--images must be at least 2, got {args.images}")
    if args.crop is not None and (args.crop < 32 or args.crop % 16):
        parser.error(f"--crop must be a multiple of 16, at least 32, got {args.crop}")
    if args.threads:
        torch.set_num_threads(args.threads)
    timed, quality, settings = scenarios(args.images, args.photo, args.crop, args.photo_block)
    report = Report(
        "benchmarks/bench_attack.py",
        argv_of(argv),
        settings={**settings, "repeats": args.repeats, "warmup": args.warmup, "clock": args.clock},
    )
    print(report.header())
    print(
        f"{settings['grey_images']} grey 32x32 images at M = 4; {args.photo} {settings['photo_size'][1]}x"
        f"{settings['photo_size'][0]} at M = 16 with {settings['references']} other photographs as references; "
        f"median (min–max) of {args.repeats} rounds, attacks in rotating order, a new key each round",
        flush=True,
    )
    samples = interleave(timed, args.repeats, args.warmup, clock=CLOCKS[args.clock])
    result = compare(samples, "encrypt (baseline)")
    report.results.append({**result, "quality": quality})
    print()
    print(table(result, quality))
    print()
    print(report.finish(args.json))


if __name__ == "__main__":
    sys.exit(main())
