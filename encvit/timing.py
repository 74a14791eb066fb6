"""Wall-clock timing that waits for queued CUDA work, so GPU and CPU figures mean the same thing;
and the device options the benchmarks share."""
from __future__ import annotations

import time

import torch


def synchronize(device: torch.device) -> None:
    """Wait for all queued work on `device` (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    """Seconds that `fn()` takes on `device`, including its queued CUDA kernels."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def add_device_options(parser) -> None:
    """--device, --amp and --threads, as every benchmark takes them."""
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    parser.add_argument("--amp", default="auto", choices=("auto", "bf16", "off"),
                        help="autocast as encvit.loop.autocast_for: auto = bf16/fp16 on CUDA, none on CPU")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def device_from_options(args, parser) -> str:
    """Apply --threads and resolve --device ('auto' -> cuda if present); a missing GPU is a usage error."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda was asked for, but torch sees no CUDA device")
    return device
