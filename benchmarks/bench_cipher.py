"""Encryption speed: the project's one-gather encrypt against a tensor copy (the floor) and a per-block loop.

    python benchmarks/bench_cipher.py [--batch 256] [--size 224] [--block 16] [--repeats 15] [--warmup 1]
                                      [--loop-images 16] [--clock wall|cpu] [--threads N] [--json PATH]

The per-block loop is the naive baseline that public research code uses: for every image and every block,
flatten the block, index it with the permutation, and write it back (timed on `--loop-images` images and
scaled to the batch: it is slow). Each round runs the copy, the encryption and the loop once, in rotating
order; ratios are computed per round and reported as median (min–max) over `--repeats` rounds.
Goals, judged on the median: encrypt <= 2x the copy; the loop >= 50x slower than encrypt.
"""

from __future__ import annotations

import argparse
import sys

import torch

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
    ratios,
    spread_cell,
    summarize,
)


def per_block_loop(key: Key, images: torch.Tensor) -> torch.Tensor:
    """The naive baseline: Python loops over images and blocks."""
    m = key.block_size
    perm = torch.from_numpy(key.pixel_permutation)
    out = torch.empty_like(images)
    n, c, h, w = images.shape
    for i in range(n):
        for by in range(0, h, m):
            for bx in range(0, w, m):
                block = images[i, :, by : by + m, bx : bx + m].reshape(-1)
                out[i, :, by : by + m, bx : bx + m] = block[perm].reshape(c, m, m)
    return out


RATIOS = {"encrypt/copy": ("encrypt", "copy"), "loop/encrypt": ("loop", "encrypt")}  # the reported ones


def measure(key: Key, images: torch.Tensor, loop_images: int, repeats: int, warmup: int, clock: str = "wall") -> dict:
    """Copy, encrypt and the per-block loop (scaled to the batch), interleaved; the two ratios per round."""
    key.encrypt(images[:1])  # build the index map once, as training does
    few = images[:loop_images]
    if not torch.equal(per_block_loop(key, few), key.encrypt(few)):
        raise AssertionError("the per-block loop and Key.encrypt disagree")
    samples = interleave(
        {"copy": images.clone, "encrypt": lambda: key.encrypt(images), "loop": lambda: per_block_loop(key, few)},
        repeats,
        warmup,
        clock=CLOCKS[clock],
    )
    samples["loop"] = [s * len(images) / len(few) for s in samples["loop"]]
    result = compare(samples)
    result["ratio_samples"] = {name: ratios(samples, base)[top] for name, (top, base) in RATIOS.items()}
    result["ratios"] = {name: summarize(values).to_dict() for name, values in result["ratio_samples"].items()}
    return result


def table(results: list[dict]) -> str:
    """One row per dtype: copy, encrypt and loop times, encrypt/copy and loop/encrypt; median (min–max)."""
    rows = [
        [
            r["dtype"],
            spread_cell(r["summary"]["copy"], digits=1, factor=1e3),
            spread_cell(r["summary"]["encrypt"], digits=1, factor=1e3),
            spread_cell(r["summary"]["loop"], digits=0, factor=1e3),
            spread_cell(r["ratios"]["encrypt/copy"], "x"),
            spread_cell(r["ratios"]["loop/encrypt"], "x", digits=0),
        ]
        for r in results
    ]
    return markdown_table(
        ["dtype", "copy (ms)", "encrypt (ms)", "per-block loop (ms)", "encrypt/copy", "loop/encrypt"], rows
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--block", type=int, default=16)
    add_repeat_options(parser, repeats=15, warmup=1)
    parser.add_argument(
        "--loop-images",
        type=int,
        default=16,
        help="the loop is timed on this many images and scaled to the batch (it is slow)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    check_repeat_options(args, parser)
    if args.size % args.block:
        parser.error(f"--size {args.size} is not a multiple of --block {args.block}")
    if not 1 <= args.loop_images <= args.batch:
        parser.error(f"--loop-images must be between 1 and --batch ({args.batch}), got {args.loop_images}")
    if args.threads:
        torch.set_num_threads(args.threads)
    key = Key.generate(args.block, 3, passphrase="bench")
    report = Report(
        "benchmarks/bench_cipher.py",
        argv_of(argv),
        settings={
            "batch": args.batch,
            "size": args.size,
            "block": args.block,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "loop_images": args.loop_images,
            "clock": args.clock,
            "threads": torch.get_num_threads(),
        },
    )
    print(report.header())
    print(
        f"batch {args.batch} x 3 x {args.size} x {args.size}, block {args.block}, {torch.get_num_threads()} "
        f"threads, {args.clock} clock; median (min–max) of {args.repeats} rounds after {args.warmup} warm-up, "
        f"each round copy, encrypt and loop in rotating order; the loop on {args.loop_images} images, scaled",
        flush=True,
    )
    for dtype in (torch.uint8, torch.float32):
        print(f"  measuring {dtype} ...", file=sys.stderr, flush=True)
        images = (torch.rand(args.batch, 3, args.size, args.size) * 255).to(dtype)
        result = measure(key, images, args.loop_images, args.repeats, args.warmup, args.clock)
        report.results.append({"dtype": str(dtype).split(".")[-1], **result})
    print()
    print(table(report.results))
    print()
    print("copy: images.clone(), the memory-copy floor; encrypt/copy and loop/encrypt are per-round ratios.")
    print(report.finish(args.json))


if __name__ == "__main__":
    main()
