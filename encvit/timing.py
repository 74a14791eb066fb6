"""Wall-clock timing that waits for queued CUDA work, so GPU and CPU figures mean the same thing."""
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
