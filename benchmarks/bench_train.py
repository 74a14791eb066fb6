"""Training throughput with encryption on and off: what the key costs in the real training step.

    python benchmarks/bench_train.py [--backbones encvit-tiny [vit_base_patch16_224]] [--methods full melo proposed]
                                     [--batch 128] [--steps 10] [--warmup 3] [--source-size 32] [--device auto]

The step is the one encvit.loop.fit runs: a uint8 batch -> device -> BatchPreprocess (resize to the backbone's
size, encryption when a key is given, normalisation) -> model -> loss -> backward -> AdamW step -> scheduler.
Images are synthetic uint8 at `--source-size` (32: CIFAR-10's size, resized on the device for a 224 backbone as
training does), so no dataset is needed. Plain and encrypted steps alternate on the same model, so load on the
machine hits both alike; each is the median of `--steps`. The encryption alone (`Key.encrypt` on one resized
batch on the device) is timed for reference. Goal: encryption costs <= 3% of the step time.
On a busy machine pass `--threads 1` (more threads than free cores make torch's OpenMP workers stall).
"""
from __future__ import annotations

import argparse
import shlex
import statistics
import sys

import torch
from torch import nn
from torchvision.transforms.v2 import functional as TF

from encvit.backbones import EMBEDDED, create_backbone, describe
from encvit.cipher import Key
from encvit.loop import autocast_for, backward_and_step, param_groups, warmup_cosine
from encvit.methods import METHODS, prepare
from encvit.preprocess import BatchPreprocess
from encvit.timing import add_device_options, device_from_options, timed

NUM_CLASSES = 10
GOAL = 0.03  # encryption may add at most 3% to the step time




def measure(backbone: str, method: str, batch: int, steps: int, warmup: int, device: torch.device,
            amp: str = "auto", source_size: int = 32, source_channels: int = 3, scramble: bool = False,
            neg_pos: bool = False) -> dict:
    """Median step time of one backbone x method with and without a key, and the encryption alone."""
    torch.manual_seed(0)
    model = create_backbone(backbone, pretrained=backbone in EMBEDDED)  # timm: random weights, offline
    geometry = describe(model, backbone)
    prepare(model, method, NUM_CLASSES)
    model.to(device).train()
    key = Key.generate(geometry.patch_size, geometry.channels, passphrase="bench", scramble=scramble, neg_pos=neg_pos)
    preprocess = {setting: BatchPreprocess(geometry.image_size, geometry.channels, k, geometry.mean,
                                           geometry.std).to(device)
                  for setting, k in (("plain", None), ("encrypted", key))}
    optimizer = torch.optim.AdamW(param_groups(model, 1e-4, None), weight_decay=0.01)
    total = 2 * (warmup + steps)
    scheduler = warmup_cosine(optimizer, total // 10, total)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    autocast, scaler = autocast_for(device, amp)
    # A small pool of in-memory uint8 batches, pinned on CUDA as fit's DataLoader does.
    generator = torch.Generator().manual_seed(0)
    pool = [(torch.randint(0, 256, (batch, source_channels, source_size, source_size), dtype=torch.uint8,
                           generator=generator),
             torch.randint(0, NUM_CLASSES, (batch,), generator=generator)) for _ in range(2)]
    if device.type == "cuda":
        pool = [(x.pin_memory(), y.pin_memory()) for x, y in pool]

    def step(x: torch.Tensor, y: torch.Tensor, prep: nn.Module) -> None:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        x = prep(x)
        with autocast:
            loss = criterion(model(x), y)
        backward_and_step(loss, optimizer, scaler)
        scheduler.step()
        loss.item()  # fit reads the loss every step

    times = {"plain": [], "encrypted": []}
    for i in range(warmup + steps):
        x, y = pool[i % len(pool)]
        order = ("plain", "encrypted") if i % 2 == 0 else ("encrypted", "plain")
        for setting in order:
            seconds = timed(lambda: step(x, y, preprocess[setting]), device)
            if i >= warmup:
                times[setting].append(seconds)

    resized = pool[0][0].to(device)
    if resized.shape[-2:] != (geometry.image_size, geometry.image_size):
        resized = TF.resize(resized, [geometry.image_size, geometry.image_size], antialias=True)
    if resized.shape[1] != geometry.channels:
        resized = resized.expand(-1, geometry.channels, -1, -1)
    key.encrypt(resized)  # build the index map once, as the first training step does
    encrypt_s = statistics.median(timed(lambda: key.encrypt(resized), device) for _ in range(max(5, steps)))
    return {"backbone": backbone, "method": method, "batch": batch, "image_size": geometry.image_size,
            "plain_s": statistics.median(times["plain"]), "encrypted_s": statistics.median(times["encrypted"]),
            "encrypt_s": encrypt_s, "key": key.describe()}


def table(results: list[dict]) -> str:
    """A Markdown table, one row per backbone x method, plain and encrypted side by side."""
    header = ["backbone", "method", "batch", "plain (img/s)", "encrypted (img/s)", "plain step (ms)",
              "encrypted step (ms)", "encrypted/plain", "encrypt alone (ms)", "encrypt/plain step", "goal <= 3%"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * (len(header) - 3) + "---|"]
    for r in results:
        overhead = r["encrypted_s"] / r["plain_s"] - 1
        cells = [r["backbone"], r["method"], str(r["batch"]), f"{r['batch'] / r['plain_s']:,.1f}",
                 f"{r['batch'] / r['encrypted_s']:,.1f}", f"{r['plain_s'] * 1e3:.1f}", f"{r['encrypted_s'] * 1e3:.1f}",
                 f"{r['encrypted_s'] / r['plain_s']:.3f}x", f"{r['encrypt_s'] * 1e3:.2f}",
                 f"{100 * r['encrypt_s'] / r['plain_s']:.2f}%", "met" if overhead <= GOAL else "NOT met"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["encvit-tiny"],
                        help="encvit-tiny or timm ViT names (random weights), space- or comma-separated; "
                             "e.g. encvit-tiny vit_base_patch16_224")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per setting first")
    parser.add_argument("--source-size", type=int, default=32,
                        help="side of the synthetic uint8 images before BatchPreprocess resizes them (CIFAR-10: 32)")
    parser.add_argument("--source-channels", type=int, default=3, choices=(1, 3))
    parser.add_argument("--scramble", action="store_true", help="key with block scrambling")
    parser.add_argument("--neg-pos", action="store_true", help="key with negative-positive transformation")
    add_device_options(parser)
    args = parser.parse_args(argv)
    args.device = device_from_options(args, parser)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backbones = [name for item in args.backbones for name in item.split(",") if name]

    print(f"command: python benchmarks/bench_train.py {shlex.join(sys.argv[1:] if argv is None else argv)}")
    amp = "off" if device.type == "cpu" and args.amp != "bf16" else args.amp
    print(f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + f", batch {args.batch}, AMP {amp}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads; "
          f"synthetic uint8 {args.source_channels}x{args.source_size}x{args.source_size} images; median of "
          f"{args.steps} steps per setting after {args.warmup} warm-up, plain and encrypted alternating", flush=True)
    results = []
    for backbone in backbones:
        for method in args.methods:
            print(f"  measuring {backbone} / {method} ...", file=sys.stderr, flush=True)
            results.append(measure(backbone, method, args.batch, args.steps, args.warmup, device, args.amp,
                                   args.source_size, args.source_channels, args.scramble, args.neg_pos))
    print()
    print(table(results))
    print()
    for backbone in dict.fromkeys(r["backbone"] for r in results):
        print(f"{backbone}: {next(r['key'] for r in results if r['backbone'] == backbone)}")
    print("encrypted/plain: ratio of median step times (goal <= 1.03); encrypt alone: Key.encrypt on one resized "
          "uint8 batch on the device, as a share of the plain step.")


if __name__ == "__main__":
    main()
