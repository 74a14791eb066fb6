"""Encryption speed: the project's one-gather encrypt against a tensor copy (the floor) and a per-block loop.

    python benchmarks/bench_cipher.py [--batch 256] [--size 224] [--block 16] [--repeat 5]

The per-block loop is the naive baseline that public research code uses: for every image and every block,
flatten the block, index it with the permutation, and write it back.
"""
import argparse
import time

import torch

from encvit.cipher import Key


def per_block_loop(key: Key, images: torch.Tensor) -> torch.Tensor:
    """The naive baseline: Python loops over images and blocks."""
    m = key.block_size
    perm = torch.from_numpy(key.pixel_permutation)
    out = torch.empty_like(images)
    n, c, h, w = images.shape
    for i in range(n):
        for by in range(0, h, m):
            for bx in range(0, w, m):
                block = images[i, :, by:by + m, bx:bx + m].reshape(-1)
                out[i, :, by:by + m, bx:bx + m] = block[perm].reshape(c, m, m)
    return out


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--block", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--loop-images", type=int, default=16,
                        help="the loop is timed on this many images and scaled to the batch (it is slow)")
    args = parser.parse_args()
    key = Key.generate(args.block, 3, passphrase="bench")
    print(f"batch {args.batch} x 3 x {args.size} x {args.size}, block {args.block}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; best of {args.repeat}")
    print(f"{'dtype':<9}{'clone (ms)':>12}{'encrypt (ms)':>14}{'loop (ms)':>12}{'encrypt/clone':>15}{'loop/encrypt':>14}")
    for dtype in (torch.uint8, torch.float32):
        images = (torch.rand(args.batch, 3, args.size, args.size) * 255).to(dtype)
        key.encrypt(images[:1])  # build the index map once, as training does
        copy_s = best_of(lambda: images.clone(), args.repeat)
        encrypt_s = best_of(lambda: key.encrypt(images), args.repeat)
        few = images[: args.loop_images]
        assert torch.equal(per_block_loop(key, few), key.encrypt(few)), "baseline and encrypt must agree"
        loop_s = best_of(lambda: per_block_loop(key, few), max(1, args.repeat // 2)) * args.batch / len(few)
        print(f"{str(dtype).split('.')[-1]:<9}{copy_s * 1e3:>12.1f}{encrypt_s * 1e3:>14.1f}{loop_s * 1e3:>12.0f}"
              f"{encrypt_s / copy_s:>14.2f}x{loop_s / encrypt_s:>13.0f}x")


if __name__ == "__main__":
    main()
